using System.Globalization;
using System.Net.Http.Json;
using System.Text.Json;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>
/// The store acknowledges, not the broker (issue 28): a device with <c>--offline all</c> keeps its readings until the
/// server's store has them, so readings sent while the server was killed are stored once it is back.
/// </summary>
public class StoredAckTests
{
    static readonly TimeSpan Wait = TimeSpan.FromSeconds(60);

    static ProcessRunner StartServer(MosquittoBroker mosquitto, string data, int http) =>
        NightlightCli.Start("server", "--broker", mosquitto.Url, "--data", data, "--http-port", http.ToString(CultureInfo.InvariantCulture), "--quiet");

    static async Task<List<long>> StoredSeqsAsync(HttpClient http, string id)
    {
        var response = await http.GetAsync($"/api/devices/{id}/readings?limit=100000");
        return response.IsSuccessStatusCode
            ? [.. (await response.Content.ReadFromJsonAsync<JsonElement>()).EnumerateArray().Select(r => r.GetProperty("seq").GetInt64())]
            : [];
    }

    [Trait("Speed", "Slow")]
    [Fact]
    public async Task Readings_sent_while_the_server_was_killed_are_stored_once_it_is_back()
    {
        await using var mosquitto = await MosquittoBroker.StartAsync();
        using var serverData = new DataDir();
        using var deviceData = new DataDir();
        var httpPort = Ports.Free();
        using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{httpPort}"), Timeout = Wait };
        var server = StartServer(mosquitto, serverData.Path, httpPort);
        try
        {
            // Readings sent before the server subscribed are not its to store: start the device once it listens.
            await server.WaitForErrorLineAsync("Server listening", Wait);
            await using var device = NightlightCli.Start("device", "--broker", mosquitto.Url, "--id", "sa1", "--offline", "all", "--qos", "1",
                "--data", deviceData.Path, "--interval", "100ms", "--light", "500");
            // Killed once the device's readings are being stored (and acknowledged), not before.
            var started = DateTime.UtcNow;
            while ((await StoredSeqsAsync(http, "sa1")).Count < 10 && DateTime.UtcNow - started < Wait)
            {
                await Task.Delay(100);
            }

            server.Signal("KILL");
            await server.WaitForExitAsync(Wait);
            await server.DisposeAsync();
            await Task.Delay(TimeSpan.FromSeconds(4));
            server = StartServer(mosquitto, serverData.Path, httpPort);

            // Past the device's 10 s resend, so the readings the dead server never got are sent again.
            await Task.Delay(TimeSpan.FromSeconds(14));
            device.Signal("INT");
            Assert.True(await device.WaitForExitAsync(Wait), device.Describe());

            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
            List<long> seqs;
            do
            {
                seqs = await StoredSeqsAsync(http, "sa1");
                if (seqs.Count > 0 && seqs.Count == seqs.Max())
                {
                    break;
                }
                await Task.Delay(250);
            } while (DateTime.UtcNow < deadline);

            Assert.True(seqs.Count > 100, $"only {seqs.Count} readings stored");
            Assert.Equal(seqs.Count, seqs.Distinct().Count());
            var missing = Enumerable.Range(1, (int)seqs.Max()).Select(i => (long)i).Except(seqs).ToList();
            Assert.True(missing.Count == 0, $"{missing.Count} of {seqs.Max()} seqs never stored: {string.Join(", ", missing.Take(20))}");
        }
        finally
        {
            await server.DisposeAsync();
        }
    }

    [Fact]
    public async Task A_gap_the_device_left_does_not_hide_the_stored_run_before_it()
    {
        await using var mosquitto = await MosquittoBroker.StartAsync();
        using var serverData = new DataDir();
        var httpPort = Ports.Free();
        await using var server = StartServer(mosquitto, serverData.Path, httpPort);
        await server.WaitForErrorLineAsync("Server listening", Wait);
        await using var device = await MqttProbe.ConnectAsync(mosquitto.Port, clientId: "gap1nightlight_client");
        await device.SubscribeAsync("gap1/stored", MQTTnet.Protocol.MqttQualityOfServiceLevel.AtLeastOnce);
        // Reading 20 was damaged in the device's outbox: it sends 1..19 and 21..40 in one burst, as a replay does.
        foreach (var seq in Enumerable.Range(1, 40).Where(n => n != 20))
        {
            await device.PublishAsync("gap1/telemetry", $"{{\"light\": 500, \"seq\": {seq}, \"epoch\": 77}}", MQTTnet.Protocol.MqttQualityOfServiceLevel.AtLeastOnce);
        }
        // Both runs are acknowledged, the one before the gap too, so the device can forget all 39 readings.
        var acks = new List<(long From, long Seq)>();
        var deadline = DateTime.UtcNow + Wait;
        while (!(acks.Any(a => a.From <= 1 && a.Seq >= 19) && acks.Any(a => a.From <= 21 && a.From > 20 && a.Seq >= 40)))
        {
            Assert.True(DateTime.UtcNow < deadline, $"acknowledgements: {string.Join(", ", device.Received.Select(m => m.Payload))}");
            await Task.Delay(100);
            acks = [.. device.Received.Where(m => m.Topic == "gap1/stored").Select(m => JsonDocument.Parse(m.Payload).RootElement)
                .Where(a => a.GetProperty("epoch").GetInt64() == 77).Select(a => (a.GetProperty("from").GetInt64(), a.GetProperty("seq").GetInt64()))];
        }
    }

    /// <summary>Kills the server with -9 once the device's first readings are stored, and starts it again after <paramref name="down"/>.</summary>
    static async Task<ProcessRunner> KillAndRestartAsync(ProcessRunner server, HttpClient http, string id, MosquittoBroker mosquitto, string data, int httpPort, TimeSpan down)
    {
        var started = DateTime.UtcNow;
        while ((await StoredSeqsAsync(http, id)).Count < 10 && DateTime.UtcNow - started < Wait)
        {
            await Task.Delay(100);
        }
        server.Signal("KILL");
        await server.WaitForExitAsync(Wait);
        await server.DisposeAsync();
        await Task.Delay(down);
        var again = StartServer(mosquitto, data, httpPort);
        await again.WaitForErrorLineAsync("Server listening", Wait);
        return again;
    }

    [Trait("Speed", "Slow")]
    [Fact]
    public async Task An_http_device_with_offline_all_keeps_its_readings_until_they_are_stored_across_a_server_kill_9()
    {
        await using var mosquitto = await MosquittoBroker.StartAsync();
        using var serverData = new DataDir();
        using var deviceData = new DataDir();
        var httpPort = Ports.Free();
        using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{httpPort}"), Timeout = Wait };
        var server = StartServer(mosquitto, serverData.Path, httpPort);
        try
        {
            await server.WaitForErrorLineAsync("Server listening", Wait);
            await using var device = NightlightCli.Start("device", "--transport", "http", "--server", $"http://127.0.0.1:{httpPort}", "--id", "ha1",
                "--offline", "all", "--data", deviceData.Path, "--interval", "50ms", "--light", "500");
            server = await KillAndRestartAsync(server, http, "ha1", mosquitto, serverData.Path, httpPort, TimeSpan.FromSeconds(3));
            await device.WaitForErrorLineAsync("the server stores readings again", Wait);
            await Task.Delay(TimeSpan.FromSeconds(2));
            device.Signal("INT");
            Assert.True(await device.WaitForExitAsync(Wait), device.Describe());

            var tally = await ReadingLedger.TallyAsync("HTTP device, server kill -9 for 3 s", http, ReadingLedger.TakenUnder(deviceData.Path, ["ha1"]), TimeSpan.FromSeconds(20));
            ReadingLedger.AssertExactlyOnce(tally, atLeast: 60);
        }
        finally
        {
            await server.DisposeAsync();
        }
    }

    [Trait("Speed", "Slow")]
    [Fact]
    public async Task A_fleet_with_offline_all_keeps_its_readings_until_they_are_stored_across_a_server_kill_9()
    {
        await using var mosquitto = await MosquittoBroker.StartAsync();
        using var serverData = new DataDir();
        using var fleetData = new DataDir();
        var httpPort = Ports.Free();
        using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{httpPort}"), Timeout = Wait };
        var server = StartServer(mosquitto, serverData.Path, httpPort);
        try
        {
            await server.WaitForErrorLineAsync("Server listening", Wait);
            await using var fleet = NightlightCli.Start("fleet", "--broker", mosquitto.Url, "--devices", "3", "--id-prefix", "fa", "--interval", "100ms",
                "--duration", "14s", "--offline", "all", "--data", fleetData.Path);
            server = await KillAndRestartAsync(server, http, "fa00001", mosquitto, serverData.Path, httpPort, TimeSpan.FromSeconds(3));
            Assert.True(await fleet.WaitForExitAsync(Wait), fleet.Describe());
            Assert.Equal(0, fleet.ExitCode);

            var tally = await ReadingLedger.TallyAsync("fleet --offline all, server kill -9 for 3 s", http,
                ReadingLedger.TakenUnder(fleetData.Path, ["fa00001", "fa00002", "fa00003"]), TimeSpan.FromSeconds(20));
            ReadingLedger.AssertExactlyOnce(tally, atLeast: 200);
        }
        finally
        {
            await server.DisposeAsync();
        }
    }
}
