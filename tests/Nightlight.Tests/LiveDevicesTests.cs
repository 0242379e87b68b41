using Nightlight.Protocol;
using Nightlight.Web;

namespace Nightlight.Tests;

/// <summary>The dashboard's memory of devices stays bounded however many ids a fleet (or a flood) brings.</summary>
public class LiveDevicesTests
{
    static TelemetryMessage Reading(string id, double light) => new(id, light, new Dictionary<string, double> { ["light"] = light });

    [Fact]
    public async Task Devices_beyond_the_limit_are_left_out_while_tracked_ones_keep_updating()
    {
        var devices = new LiveDevices(TimeProvider.System);
        // Added from several threads at once, as the MQTT receive path and the HTTP devices do.
        await Task.WhenAll(Enumerable.Range(0, 4).Select(k => Task.Run(() =>
        {
            for (var i = k; i < LiveDevices.MaxDevices + 500; i += 4)
            {
                devices.Add(Reading($"d{i:D5}", i));
            }
        })));

        var snapshot = devices.Snapshot();
        Assert.InRange(snapshot.Count, LiveDevices.MaxDevices, LiveDevices.MaxDevices + 4);
        Assert.Null(devices.Add(Reading("latecomer", 1)));
        Assert.DoesNotContain(devices.Snapshot(), d => d.Id == "latecomer");

        var tracked = snapshot[0].Id;
        Assert.NotNull(devices.Add(Reading(tracked, 42)));
        Assert.Equal(42, devices.Snapshot().Single(d => d.Id == tracked).LastReading!.Measurements["light"]);
    }
}
