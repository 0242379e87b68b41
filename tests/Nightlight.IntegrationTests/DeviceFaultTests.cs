using System.Text;
using MQTTnet.Protocol;
using Nightlight.Device;
using Nightlight.Mqtt;
using Nightlight.Protocol;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>
/// The device SDK against the real internet's faults, with real processes: the <c>nightlight device</c> command,
/// Mosquitto as the broker, a TCP proxy that cuts the link, and kill -9.
/// </summary>
public class DeviceFaultTests
{
    static readonly TimeSpan Long = TimeSpan.FromSeconds(30);

    static List<TelemetryMessage> Readings(MqttProbe probe, string id) =>
        [.. probe.Received.Where(m => m.Topic == Topics.Telemetry(id)).Select(m =>
            TelemetryParser.TryParse(id, Encoding.UTF8.GetBytes(m.Payload), out var reading, out var error) ? reading : throw new InvalidOperationException(error))];

    static int SentLines(ProcessRunner device) => device.StdoutLines.Count(l => l.Contains("Sending telemetry", StringComparison.Ordinal));

    static async Task WaitUntilAsync(Func<bool> condition, string what, ProcessRunner? process = null)
    {
        var deadline = DateTime.UtcNow + Long;
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, $"waited for {what}\n{process?.Describe()}");
            await Task.Delay(50);
        }
    }

    [Trait("Speed", "Slow")]
    [Fact]
    public async Task Offline_all_delivers_every_reading_in_order_through_a_cut_link_and_a_kill_9()
    {
        await using var mosquitto = await MosquittoBroker.StartAsync();
        await using var proxy = TcpProxy.Start(mosquitto.Port);
        await using var probe = await MqttProbe.ConnectAsync(mosquitto.Port);
        await probe.SubscribeAsync(Topics.Telemetry("f1"), MqttQualityOfServiceLevel.AtLeastOnce);
        using var data = new TempDirectory("device");
        string[] args = ["device", "--broker", proxy.Url, "--id", "f1", "--offline", "all", "--data", data.Path, "--interval", "5ms", "--light", "500"];

        var first = NightlightCli.Start(args);
        await WaitUntilAsync(() => Readings(probe, "f1").Count >= 200, "200 readings", first);

        // A live outage: the backlog builds on disk and is replayed by the same process.
        proxy.Cut();
        await Task.Delay(TimeSpan.FromSeconds(3));
        var producedDuringCut = SentLines(first);
        proxy.Restore();
        await WaitUntilAsync(() => Readings(probe, "f1").Select(r => r.Seq).Distinct().Count() >= producedDuringCut, "the backlog of the first cut", first);

        // A second outage, and the process is killed while readings wait on disk.
        proxy.Cut();
        await Task.Delay(TimeSpan.FromSeconds(2));
        first.Signal("KILL");
        Assert.True(await first.WaitForExitAsync(Long), first.Describe());
        var producedByFirst = SentLines(first);
        Assert.True(producedByFirst > Readings(probe, "f1").Select(r => r.Seq).Distinct().Count(), "nothing was waiting on disk at the kill");
        await first.DisposeAsync();

        await using var second = NightlightCli.Start(args);
        await second.WaitForLineAsync("Sending telemetry", Long);
        proxy.Restore();
        await WaitUntilAsync(() => SentLines(second) > 300 && Readings(probe, "f1").Max(r => r.Seq) > producedByFirst + 200, "readings of the restarted device", second);
        second.Signal("INT");
        Assert.True(await second.WaitForExitAsync(Long), second.Describe());

        var readings = Readings(probe, "f1");
        var firstArrivals = readings.DistinctBy(r => r.Seq).Select(r => r.Seq!.Value).ToList();
        // In order: each seq's first arrival comes after every smaller seq's.
        Assert.True(firstArrivals.Zip(firstArrivals.Skip(1)).All(p => p.First < p.Second), "readings arrived out of order");
        // Every reading the killed process took (it said "Sending telemetry" for each) arrived: seq 1..N, and more.
        Assert.Equal(Enumerable.Range(1, producedByFirst).Select(i => (long)i), firstArrivals.Take(producedByFirst));
        // The only gap is the restart's: the counter goes on from the next reserved block, so a crash never reuses
        // a number; nothing is missing on either side of it.
        var gaps = firstArrivals.Zip(firstArrivals.Skip(1)).Where(p => p.Second != p.First + 1).ToList();
        var gap = Assert.Single(gaps);
        Assert.True(gap.First >= producedByFirst && (gap.Second - 1) % SequenceCounter.BlockSize == 0, $"the restart went from seq {gap.First} to {gap.Second}");
        // Duplicates (replayed after a lost acknowledgement) carry the same seq and the same reading.
        foreach (var group in readings.GroupBy(r => r.Seq))
        {
            Assert.Single(group.Select(r => (r.Light, r.Timestamp)).Distinct());
        }
    }

    [Fact]
    public async Task Offline_latest_sends_only_the_newest_reading_after_an_outage()
    {
        await using var mosquitto = await MosquittoBroker.StartAsync();
        await using var proxy = TcpProxy.Start(mosquitto.Port);
        await using var probe = await MqttProbe.ConnectAsync(mosquitto.Port);
        await probe.SubscribeAsync(Topics.Telemetry("l1"));
        using var data = new TempDirectory("device");
        await using var device = NightlightCli.Start("device", "--broker", proxy.Url, "--id", "l1", "--offline", "latest", "--data", data.Path,
            "--interval", "50ms", "--light", "500");
        await probe.WaitForAsync(m => m.Topic == "l1/telemetry", 5);

        proxy.Cut();
        await Task.Delay(300);
        foreach (var level in new[] { "101", "102", "103" })
        {
            await device.TypeAsync(level);
            await device.WaitForLineAsync($"Light set to {level}");
            await Task.Delay(400);
        }
        var beforeRestore = Readings(probe, "l1").Count;
        // Each reading prints one line and seq starts at 1 in a fresh data directory: this is the newest seq so far.
        var newestAtRestore = SentLines(device);
        proxy.Restore();
        await WaitUntilAsync(() => Readings(probe, "l1").Count >= beforeRestore + 3, "readings after the outage", device);

        var after = Readings(probe, "l1").Skip(beforeRestore).ToList();
        Assert.DoesNotContain(after, r => r.Light is 101 or 102);
        Assert.True(after[0].Seq >= newestAtRestore, $"the first reading after the outage (seq {after[0].Seq}) is older than the newest one taken ({newestAtRestore})");
        Assert.True(after.Skip(1).All(r => r.Seq > after[0].Seq), "an older reading followed the newest one");
        Assert.Contains("Sending telemetry {\"light\": 101}", device.Stdout);
    }

    [Fact]
    public async Task Offline_drop_sends_nothing_taken_offline_and_carries_on()
    {
        await using var mosquitto = await MosquittoBroker.StartAsync();
        await using var proxy = TcpProxy.Start(mosquitto.Port);
        await using var probe = await MqttProbe.ConnectAsync(mosquitto.Port);
        await probe.SubscribeAsync(Topics.Telemetry("d1"));
        using var data = new TempDirectory("device");
        await using var device = NightlightCli.Start("device", "--broker", proxy.Url, "--id", "d1", "--offline", "drop", "--data", data.Path,
            "--interval", "50ms", "--light", "500");
        await probe.WaitForAsync(m => m.Topic == "d1/telemetry", 5);

        proxy.Cut();
        await Task.Delay(300);
        await device.TypeAsync("101");
        await device.WaitForErrorLineAsync("dropping readings until the connection is back", Long);
        await Task.Delay(500);
        proxy.Restore();
        await device.WaitForErrorLineAsync("readings taken offline were dropped", Long);
        await device.TypeAsync("600");
        await WaitUntilAsync(() => Readings(probe, "d1").Any(r => r.Light == 600), "a live reading after the outage", device);

        Assert.DoesNotContain(Readings(probe, "d1"), r => r.Light == 101 && r.Timestamp < DateTimeOffset.UtcNow.AddSeconds(-30));
        var seqs = Readings(probe, "d1").Select(r => r.Seq!.Value).ToList();
        Assert.True(seqs.Zip(seqs.Skip(1)).All(p => p.First < p.Second), "seq must keep increasing");
        Assert.True(seqs.Zip(seqs.Skip(1)).Any(p => p.Second - p.First > 3), "the outage should leave a gap in seq");
        Assert.False(device.HasExited);
    }

    [Fact]
    public async Task Presence_is_retained_online_and_the_last_will_says_offline_after_kill_9()
    {
        await using var mosquitto = await MosquittoBroker.StartAsync();
        using var data = new TempDirectory("device");
        var device = NightlightCli.Start("device", "--broker", mosquitto.Url, "--id", "p1", "--data", data.Path, "--interval", "1s", "--light", "500");
        await using (device)
        {
            await using var early = await MqttProbe.ConnectAsync(mosquitto.Port);
            await early.SubscribeAsync(Topics.Status("p1"));
            await early.WaitForAsync(m => m.Topic == "p1/status" && m.Payload == "{\"online\": true}");
            device.Signal("KILL");
            await early.WaitForAsync(m => m.Topic == "p1/status" && m.Payload == "{\"online\": false}");
        }
        // Someone who subscribes later still learns it, from the retained message.
        await using var late = await MqttProbe.ConnectAsync(mosquitto.Port);
        await late.SubscribeAsync(Topics.Status("p1"));
        var status = await late.WaitForAsync(m => m.Topic == "p1/status");
        Assert.Equal("{\"online\": false}", status[0].Payload);
        Assert.True(status[0].Retained);

        // A clean stop says offline too (a clean disconnect does not fire the will).
        await using var again = NightlightCli.Start("device", "--broker", mosquitto.Url, "--id", "p1", "--data", data.Path, "--interval", "1s", "--light", "500");
        await late.WaitForAsync(m => m.Topic == "p1/status" && m.Payload == "{\"online\": true}");
        again.Signal("INT");
        Assert.True(await again.WaitForExitAsync(Long), again.Describe());
        await late.WaitForAsync(m => m.Topic == "p1/status" && m.Payload == "{\"online\": false}", 2);
    }

    [Fact]
    public async Task Ordered_commands_are_applied_once_and_in_order_across_a_device_kill_9()
    {
        await using var mosquitto = await MosquittoBroker.StartAsync();
        using var data = new TempDirectory("device");
        string[] args = ["device", "--broker", mosquitto.Url, "--id", "o1", "--data", data.Path, "--interval", "1s", "--light", "500"];
        await using var probe = await MqttProbe.ConnectAsync(mosquitto.Port);
        await probe.SubscribeAsync(Topics.Acks("o1"), MqttQualityOfServiceLevel.AtLeastOnce);
        await probe.SubscribeAsync(Topics.Status("o1"));

        await using var connection = new ManagedMqttConnection(new MqttConnectionOptions
        {
            Brokers = [BrokerAddress.Parse(mosquitto.Url)],
            ClientId = "sender-o1",
        }, Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);
        await using var sender = new OrderedCommandSender(connection, new OrderedCommandSenderOptions { RetryInterval = TimeSpan.FromMilliseconds(500) });
        connection.MessageReceived = (topic, payload) =>
        {
            sender.TryHandleAck(topic, payload);
            return Task.CompletedTask;
        };
        await connection.SubscribeAsync(Topics.AllAcks, MqttQualityOfServiceLevel.AtLeastOnce);
        await connection.StartAsync(CancellationToken.None);

        await using var first = NightlightCli.Start(args);
        await probe.WaitForAsync(m => m.Topic == "o1/status" && m.Payload == "{\"online\": true}");
        var sent = new List<CommandMessage>();
        for (var i = 0; i < 4; i++)
        {
            Assert.Equal(OrderedCommandOutcome.Acknowledged, await sender.SendAsync("o1", new CommandMessage(i % 2 == 0), sent.Add).WaitAsync(Long));
        }
        first.Signal("KILL");
        Assert.True(await first.WaitForExitAsync(Long));

        // Queued while the device is down: the sender retries until the restarted device acknowledges them.
        var pending = Enumerable.Range(0, 3).Select(i => sender.SendAsync("o1", new CommandMessage(i % 2 == 1), sent.Add)).ToList();
        await Task.Delay(1000);
        await using var second = NightlightCli.Start(args);
        Assert.All(await Task.WhenAll(pending).WaitAsync(Long), outcome => Assert.Equal(OrderedCommandOutcome.Acknowledged, outcome));
        Assert.True(sender.Retries > 0, "commands sent while the device was down must have been retried");

        // A duplicate of a command applied before the kill: acknowledged again, not applied again.
        var old = sent[1];
        var acksBefore = probe.Received.Count(m => m.Payload.Contains($"\"{old.Id}\"", StringComparison.Ordinal));
        await probe.PublishAsync(Topics.Commands("o1"), old.ToString(), MqttQualityOfServiceLevel.AtLeastOnce);
        await probe.WaitForAsync(m => m.Topic == "o1/acks" && m.Payload.Contains($"\"{old.Id}\"", StringComparison.Ordinal), acksBefore + 1);

        string[] Applied(ProcessRunner p) => [.. p.StdoutLines.Where(l => l.Contains("\"ordered\": true", StringComparison.Ordinal))];
        var appliedIds = Applied(first).Concat(Applied(second))
            .Select(l => sent.Single(c => l.Contains($"\"id\": \"{c.Id}\"", StringComparison.Ordinal)).Id).ToList();
        Assert.Equal(sent.Select(c => c.Id), appliedIds);
    }

    [Fact]
    public async Task The_thermostat_runs_on_the_same_sdk_from_the_cli()
    {
        await using var mosquitto = await MosquittoBroker.StartAsync();
        await using var probe = await MqttProbe.ConnectAsync(mosquitto.Port);
        await probe.SubscribeAsync(Topics.Telemetry("t1"));
        using var data = new TempDirectory("device");
        await using var thermostat = NightlightCli.Start("device", "--type", "thermostat", "--broker", mosquitto.Url, "--id", "t1", "--data", data.Path,
            "--interval", "100ms", "--temperature", "17.5", "--offline", "latest", "--qos", "1");
        var readings = await probe.WaitForAsync(m => m.Topic == "t1/telemetry");
        Assert.StartsWith("{\"temperature\": 17.5, \"seq\": ", readings[0].Payload);
        await thermostat.WaitForLineAsync("Sending telemetry {\"temperature\": 17.5}");

        // Once a reading arrived the device is subscribed (it subscribes before it publishes): one command is enough.
        await probe.PublishAsync(Topics.Commands("t1"), "{\"heating_on\": true}");
        await thermostat.WaitForLineAsync("Heating switched ON");
        // A stale state command (older seq than the last applied) does not switch it back.
        await probe.PublishAsync(Topics.Commands("t1"), "{\"heating_on\": true, \"seq\": 10}");
        await probe.PublishAsync(Topics.Commands("t1"), "{\"heating_on\": false, \"seq\": 9}");
        await probe.PublishAsync(Topics.Commands("t1"), "{\"heating_on\": true, \"seq\": 11}");
        await thermostat.WaitForLineAsync("Message received: {\"heating_on\": true, \"seq\": 11}");
        Assert.DoesNotContain("Heating switched OFF", thermostat.Stdout);
        await thermostat.WaitForErrorLineAsync("ignored a stale command", Long);
    }
}
