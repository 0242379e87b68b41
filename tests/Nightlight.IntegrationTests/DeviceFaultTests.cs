using System.Globalization;
using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
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

    static Task WaitUntilAsync(Func<bool> condition, string what, ProcessRunner? process = null) =>
        WaitUntilAsync(() => Task.FromResult(condition()), what, process);

    static async Task WaitUntilAsync(Func<Task<bool>> condition, string what, ProcessRunner? process = null)
    {
        var deadline = DateTime.UtcNow + Long;
        while (!await condition())
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
        // Every reading the killed process took arrived: seq 1..N-1, and more. It says "Sending telemetry" just before
        // the reading goes to the outbox (the lesson's causal order), so the kill may interrupt the last one it said.
        var surelyTaken = producedByFirst - 1;
        Assert.Equal(Enumerable.Range(1, surelyTaken).Select(i => (long)i), firstArrivals.Take(surelyTaken));
        // The restart goes on from the next number: no gap, except one number when the kill fell between taking it
        // and writing its reading to the outbox (that reading was only in memory).
        var gaps = firstArrivals.Zip(firstArrivals.Skip(1)).Where(p => p.Second != p.First + 1).ToList();
        Assert.True(gaps.Count == 0 || gaps is [var gap] && gap.First >= surelyTaken && gap.Second == gap.First + 2,
            $"the restart left gaps: {string.Join(", ", gaps.Select(g => $"{g.First}→{g.Second}"))}");
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

    static CommandMessage ParseCommand(string payload) =>
        CommandMessage.TryParse(Encoding.UTF8.GetBytes(payload), out var command, out var error) ? command : throw new InvalidOperationException(error);

    /// <summary>The device's Debug lines (which ordered command it applies) on its standard error.</summary>
    static readonly Dictionary<string, string> DebugDevice = new() { ["NIGHTLIGHT_Logging__LogLevel__Nightlight.Device"] = "Debug" };

    [Fact]
    public async Task Ordered_commands_from_the_server_are_applied_once_and_in_order_across_a_device_kill_9()
    {
        await using var mosquitto = await MosquittoBroker.StartAsync();
        var port = Ports.Free();
        await using var server = NightlightCli.StartWith(new Dictionary<string, string> { ["NIGHTLIGHT_Commands__RetryInterval"] = "500ms" },
            "server", "--broker", mosquitto.Url, "--http-port", port.ToString(CultureInfo.InvariantCulture));
        await server.StopIfNotReadyAsync(p => p.WaitForErrorLineAsync("Server listening", Long));
        using var api = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}") };
        using var data = new TempDirectory("device");
        string[] args = ["device", "--broker", mosquitto.Url, "--id", "o1", "--data", data.Path, "--interval", "1s", "--light", "500"];
        await using var probe = await MqttProbe.ConnectAsync(mosquitto.Port);
        await probe.SubscribeAsync(Topics.Acks("o1"), MqttQualityOfServiceLevel.AtLeastOnce);
        await probe.SubscribeAsync(Topics.Status("o1"));
        await probe.SubscribeAsync(Topics.Commands("o1"), MqttQualityOfServiceLevel.AtLeastOnce);

        async Task<string> SendAsync(bool ledOn)
        {
            // Manual commands hold the rule back, so every command after the first comes from here.
            var response = await api.PostAsJsonAsync("/api/devices/o1/commands", new Dictionary<string, object> { ["led_on"] = ledOn, ["overrideFor"] = "10m" });
            Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
            return (await response.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("id").GetString()!;
        }
        async Task<string?> StatusAsync(string id)
        {
            var commands = await api.GetFromJsonAsync<JsonElement>("/api/devices/o1/commands");
            return commands.EnumerateArray().Where(c => c.GetProperty("id").GetString() == id).Select(c => c.GetProperty("status").GetString()).FirstOrDefault();
        }
        Task WaitForStatusAsync(string id, string status) =>
            WaitUntilAsync(async () => await StatusAsync(id) == status, $"command {id} to be {status}", server);

        await using var first = NightlightCli.StartWith(DebugDevice, args);
        await probe.WaitForAsync(m => m.Topic == "o1/status" && m.Payload == "{\"online\": true}");
        await WaitUntilAsync(async () => (await api.GetAsync("/api/devices/o1")).StatusCode == HttpStatusCode.OK, "the server to know o1", server);
        var before = new List<string>();
        for (var i = 0; i < 4; i++)
        {
            before.Add(await SendAsync(i % 2 == 0));
            await WaitForStatusAsync(before[^1], "acknowledged");
        }
        first.Signal("KILL");
        Assert.True(await first.WaitForExitAsync(Long));

        // Sent while the device is down: each overtakes the one before it, and the server resends the newest.
        var queued = new List<string>();
        for (var i = 0; i < 3; i++)
        {
            queued.Add(await SendAsync(i % 2 == 1));
        }
        await probe.WaitForAsync(m => m.Topic == "o1/commands" && m.Payload.Contains($"\"{queued[^1]}\"", StringComparison.Ordinal), count: 2);
        await using var second = NightlightCli.StartWith(DebugDevice, args);
        await WaitForStatusAsync(queued[^1], "acknowledged");
        Assert.Equal("superseded", await StatusAsync(queued[0]));
        Assert.Equal("superseded", await StatusAsync(queued[1]));

        // A duplicate of a command applied before the kill: acknowledged again, not applied again.
        var old = probe.Received.First(m => m.Topic == "o1/commands" && m.Payload.Contains($"\"{before[1]}\"", StringComparison.Ordinal));
        var acksBefore = probe.Received.Count(m => m.Topic == "o1/acks" && m.Payload.Contains($"\"{before[1]}\"", StringComparison.Ordinal));
        await probe.PublishAsync(Topics.Commands("o1"), old.Payload, MqttQualityOfServiceLevel.AtLeastOnce);
        await probe.WaitForAsync(m => m.Topic == "o1/acks" && m.Payload.Contains($"\"{before[1]}\"", StringComparison.Ordinal), acksBefore + 1);

        // What both device processes applied: each command once, in the server's order, the newest last.
        var onWire = probe.Received.Where(m => m.Topic == "o1/commands").Select(m => ParseCommand(m.Payload)).Where(c => c.Ordered)
            .DistinctBy(c => c.Id).ToList();
        // The device logs each ordered command it applies at Debug (its lesson line shows only the lesson's payload).
        string[] Applied(ProcessRunner p) => [.. p.StderrLines.Where(l => l.Contains("applies ordered command", StringComparison.Ordinal))];
        var applied = Applied(first).Concat(Applied(second))
            .Select(l => onWire.Single(c => l.Contains($"\"id\": \"{c.Id}\"", StringComparison.Ordinal))).ToList();
        Assert.Equal(applied.Select(c => c.Id).Distinct(), applied.Select(c => c.Id));
        Assert.Equal(applied.OrderBy(c => c.Seq).Select(c => c.Id), applied.Select(c => c.Id));
        Assert.All(before, id => Assert.Contains(id, applied.Select(c => c.Id)));
        Assert.Equal(queued[^1], applied[^1].Id);
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
        await thermostat.WaitForErrorLineAsync("ignored a stale command", Long);
        // Applied: the first, seq 10 and seq 11, each printed as the lesson shows it; seq 9 was not.
        await thermostat.WaitForCountAsync(l => l.EndsWith("Message received: {\"heating_on\": true}", StringComparison.Ordinal), 3, "three applied commands");
        Assert.DoesNotContain("Heating switched OFF", thermostat.Stdout);
    }
}
