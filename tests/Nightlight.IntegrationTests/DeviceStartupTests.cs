using System.Text;
using MQTTnet.Protocol;
using Nightlight.Protocol;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>
/// Regressions of the device's first moments: a device that starts before its broker answers, and the first
/// command after (re)connecting. The broker "appears" when a TCP proxy starts listening on the port the device was
/// given (before that, connections are refused, as with a broker still booting), so the test's subscriber is
/// already in place when the device gets through.
/// </summary>
public class DeviceStartupTests
{
    static readonly TimeSpan Long = TimeSpan.FromSeconds(30);

    static List<TelemetryMessage> Readings(MqttProbe probe, string id) =>
        [.. probe.Received.Where(m => m.Topic == Topics.Telemetry(id)).Select(m =>
            TelemetryParser.TryParse(id, Encoding.UTF8.GetBytes(m.Payload), out var reading, out var error) ? reading : throw new InvalidOperationException(error))];

    static async Task WaitUntilAsync(Func<bool> condition, string what, ProcessRunner process)
    {
        var deadline = DateTime.UtcNow + Long;
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, $"waited for {what}\n{process.Describe()}");
            await Task.Delay(50);
        }
    }

    [Theory]
    [InlineData("all", "50ms")]
    [InlineData("latest", "1h")]
    public async Task A_device_started_before_its_broker_loses_no_reading_not_even_seq_1(string offline, string interval)
    {
        await using var mosquitto = await MosquittoBroker.StartAsync();
        await using var probe = await MqttProbe.ConnectAsync(mosquitto.Port);
        await probe.SubscribeAsync(Topics.Telemetry("s1"), MqttQualityOfServiceLevel.AtLeastOnce);
        var port = Ports.Free();
        using var data = new TempDirectory("device");
        await using var device = NightlightCli.Start("device", "--broker", $"mqtt://127.0.0.1:{port}", "--id", "s1", "--offline", offline,
            "--data", data.Path, "--interval", interval, "--light", "500");
        await device.WaitForErrorLineAsync("Cannot reach broker", Long);
        // The warning can come before the first reading is printed; the broker is not up yet, so any reading is offline.
        await device.WaitForLineAsync("Sending telemetry", Long);
        var takenOffline = device.StdoutLines.Count(l => l.Contains("Sending telemetry", StringComparison.Ordinal));
        Assert.True(takenOffline >= 1, device.Describe());

        await using var broker = TcpProxy.Start(mosquitto.Port, port);
        await WaitUntilAsync(() => Readings(probe, "s1").Count >= takenOffline, $"the {takenOffline} readings taken before the broker answered", device);

        var seqs = Readings(probe, "s1").Select(r => r.Seq!.Value).Distinct().ToList();
        Assert.Equal(1, seqs[0]);
        Assert.Equal(Enumerable.Range(1, seqs.Count).Select(i => (long)i), seqs);
    }

    [Fact]
    public async Task A_device_started_before_its_broker_with_offline_drop_says_it_dropped_the_first_reading()
    {
        await using var mosquitto = await MosquittoBroker.StartAsync();
        await using var probe = await MqttProbe.ConnectAsync(mosquitto.Port);
        await probe.SubscribeAsync(Topics.Telemetry("s2"));
        var port = Ports.Free();
        using var data = new TempDirectory("device");
        await using var device = NightlightCli.Start("device", "--broker", $"mqtt://127.0.0.1:{port}", "--id", "s2", "--offline", "drop",
            "--data", data.Path, "--interval", "200ms", "--light", "500");
        await device.WaitForErrorLineAsync("dropping readings until the connection is back", Long);

        await using var broker = TcpProxy.Start(mosquitto.Port, port);
        await device.WaitForErrorLineAsync("readings taken offline were dropped", Long);
        await WaitUntilAsync(() => Readings(probe, "s2").Count > 0, "a reading after the broker answered", device);
        Assert.DoesNotContain(Readings(probe, "s2"), r => r.Seq == 1);
    }

    [Fact]
    public async Task The_first_command_after_connecting_is_not_missed_because_the_subscription_came_after_the_first_reading()
    {
        await using var mosquitto = await MosquittoBroker.StartAsync();
        await using var probe = await MqttProbe.ConnectAsync(mosquitto.Port);
        await probe.SubscribeAsync(Topics.Telemetry("t2"));
        using var data = new TempDirectory("device");
        await using var thermostat = NightlightCli.Start("device", "--type", "thermostat", "--broker", mosquitto.Url, "--id", "t2", "--data", data.Path,
            "--interval", "5ms", "--temperature", "17.5");

        // Answer the very first reading at once, the way a server does: the device must already be subscribed. (Before
        // the fix, readings taken every 5 ms could be published between CONNACK and the SUBSCRIBE.)
        await probe.WaitForAsync(m => m.Topic == "t2/telemetry", timeout: Long);
        await probe.PublishAsync(Topics.Commands("t2"), "{\"heating_on\": true}");
        await thermostat.WaitForLineAsync("Heating switched ON", Long);
    }
}
