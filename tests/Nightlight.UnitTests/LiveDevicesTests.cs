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

    [Fact]
    public void The_live_chart_keeps_the_last_readings_in_order_with_their_measurements_seq_and_time()
    {
        var devices = new LiveDevices(TimeProvider.System);
        var start = new DateTimeOffset(2026, 11, 26, 9, 0, 0, TimeSpan.FromHours(8));
        var sent = new List<TelemetryMessage>();
        for (var i = 0; i < LiveDevices.RecentPerDevice + 50; i++)
        {
            // One measurement, two, and now and then more than fit beside a reading; every seventh has no seq.
            var measurements = new Dictionary<string, double> { ["light"] = i };
            if (i % 3 == 0)
            {
                measurements["temperature"] = i / 10.0;
            }
            if (i % 11 == 0)
            {
                foreach (var name in new[] { "a", "b", "c", "d", "e" })
                {
                    measurements[name] = -i;
                }
            }
            var message = new TelemetryMessage("arm", i, measurements, i % 7 == 0 ? null : i, start.AddSeconds(i));
            sent.Add(message);
            Assert.Equal(message.Timestamp, devices.Add(message));
        }

        var device = devices.Snapshot().Single();
        var expected = sent.Skip(50).ToList();
        Assert.Equal(expected.Count, device.Recent.Count);
        for (var i = 0; i < expected.Count; i++)
        {
            Assert.Equal(expected[i].Timestamp, device.Recent[i].Ts);
            Assert.Equal(expected[i].Timestamp!.Value.Offset, device.Recent[i].Ts.Offset);
            Assert.Equal(expected[i].Seq, device.Recent[i].Seq);
            Assert.Equal(expected[i].Measurements.OrderBy(m => m.Key), device.Recent[i].Measurements.OrderBy(m => m.Key));
        }
        Assert.Equal(expected[^1].Measurements.OrderBy(m => m.Key), device.LastReading!.Measurements.OrderBy(m => m.Key));
        Assert.Equal(expected[^1].Seq, device.LastReading.Seq);
    }
    [Fact]
    public void With_many_devices_each_keeps_its_share_of_the_live_chart_newest_first_kept()
    {
        var devices = new LiveDevices(TimeProvider.System);
        var start = new DateTimeOffset(2026, 12, 6, 9, 0, 0, TimeSpan.Zero);
        TelemetryMessage At(string id, int i) => new(id, i, new Dictionary<string, double> { ["light"] = i }, i, start.AddSeconds(i));
        // The first device fills the whole per-device window while it is alone.
        for (var i = 0; i < LiveDevices.RecentPerDevice; i++)
        {
            devices.Add(At("first", i));
        }
        Assert.Equal(LiveDevices.RecentPerDevice, devices.Snapshot().Single().Recent.Count);

        // A fleet joins: every device, the first included, keeps only its share from then on.
        for (var d = 1; d < LiveDevices.MaxDevices; d++)
        {
            for (var i = 0; i < 3; i++)
            {
                devices.Add(At($"d{d:D4}", i));
            }
        }
        devices.Add(At("first", LiveDevices.RecentPerDevice));

        var share = LiveDevices.RecentFor(LiveDevices.MaxDevices);
        Assert.Equal(LiveDevices.RecentPerDeviceAtLeast, share);
        var first = devices.Snapshot().Single(d => d.Id == "first");
        Assert.Equal(share, first.Recent.Count);
        Assert.Equal(Enumerable.Range(LiveDevices.RecentPerDevice + 1 - share, share).Select(i => (long?)i), first.Recent.Select(r => r.Seq));
        Assert.Equal(LiveDevices.RecentPerDevice, first.LastReading!.Seq);

        // And it goes on as a ring of that share.
        for (var i = 1; i <= 100; i++)
        {
            devices.Add(At("first", LiveDevices.RecentPerDevice + i));
        }
        first = devices.Snapshot().Single(d => d.Id == "first");
        Assert.Equal(Enumerable.Range(LiveDevices.RecentPerDevice + 101 - share, share).Select(i => (long?)i), first.Recent.Select(r => r.Seq));
        Assert.Equal(300, LiveDevices.RecentFor(200));
        Assert.Equal(LiveDevices.RecentPerDevice, LiveDevices.RecentFor(1));
    }
}
