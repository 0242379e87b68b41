using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using MQTTnet.Protocol;
using Nightlight.Protocol;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>The server's stored history and commands, through the real CLI, a real broker and HTTP.</summary>
public class HistoryApiTests
{
    static readonly TimeSpan Wait = TimeSpan.FromSeconds(30);

    sealed class Setup : IAsyncDisposable
    {
        public required ProcessRunner Broker { get; init; }
        public required ProcessRunner Server { get; init; }
        public required int MqttPort { get; init; }
        public required HttpClient Http { get; init; }

        /// <summary>The server's data directory when this setup made it: deleted once the server has stopped.</summary>
        public TempDirectory? OwnedData { get; init; }

        public async ValueTask DisposeAsync()
        {
            Http.Dispose();
            await Server.DisposeAsync();
            await Broker.DisposeAsync();
            OwnedData?.Dispose();
        }
    }

    /// <summary>
    /// A broker and a server storing into <paramref name="data"/>, or into a fresh directory of its own, with
    /// <paramref name="environment"/> for settings that have no flag.
    /// </summary>
    static async Task<Setup> StartAsync(string? data = null, IDictionary<string, string>? environment = null)
    {
        var (broker, mqtt, _) = await NightlightCli.StartBrokerAsync();
        var http = Ports.Free();
        TempDirectory? owned = null;
        if (data is null)
        {
            owned = new TempDirectory("history");
            data = owned.Path;
        }
        var server = NightlightCli.StartWith(environment ?? new Dictionary<string, string>(), "server", "--broker", $"mqtt://127.0.0.1:{mqtt}", "--http-port", http.ToString(), "--data", data);
        await server.StopIfNotReadyAsync(p => p.WaitForErrorLineAsync("Server listening", Wait), broker, owned);
        return new Setup { Broker = broker, Server = server, MqttPort = mqtt, OwnedData = owned, Http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{http}") } };
    }

    /// <summary>Polls a JSON array until <paramref name="done"/> holds for it.</summary>
    static async Task<JsonElement> PollAsync(HttpClient http, string path, Func<JsonElement, bool> done)
    {
        var deadline = DateTime.UtcNow + Wait;
        while (true)
        {
            var response = await http.GetAsync(path);
            if (response.StatusCode == HttpStatusCode.OK)
            {
                var json = await response.Content.ReadFromJsonAsync<JsonElement>();
                if (done(json))
                {
                    return json;
                }
            }
            if (DateTime.UtcNow > deadline)
            {
                Assert.Fail($"GET {path} never got there; last answer {(int)response.StatusCode}: {await response.Content.ReadAsStringAsync()}");
            }
            await Task.Delay(200);
        }
    }

    [Fact]
    public async Task A_reading_redelivered_by_qos1_is_stored_once_and_the_history_shows_it()
    {
        await using var s = await StartAsync();
        await using var device = await MqttProbe.ConnectAsync(s.MqttPort);
        await device.PublishAsync("hist1/telemetry", "{\"light\": 100, \"seq\": 1, \"temperature\": 18.5}", MqttQualityOfServiceLevel.AtLeastOnce);
        await device.PublishAsync("hist1/telemetry", "{\"light\": 100, \"seq\": 1, \"temperature\": 18.5}", MqttQualityOfServiceLevel.AtLeastOnce);
        await device.PublishAsync("hist1/telemetry", "{\"light\": 500, \"seq\": 2}", MqttQualityOfServiceLevel.AtLeastOnce);
        await device.PublishAsync("hist1/telemetry", "{\"light\": 300, \"seq\": 3}", MqttQualityOfServiceLevel.AtLeastOnce);

        // Seq 3 stored means everything before it was handled: the duplicate of seq 1 had its chance.
        var readings = await PollAsync(s.Http, "/api/devices/hist1/readings", r => r.EnumerateArray().Any(x => x.GetProperty("seq").GetInt64() == 3));

        Assert.Equal([1L, 2L, 3L], readings.EnumerateArray().Select(r => r.GetProperty("seq").GetInt64()));
        Assert.Equal(18.5, readings[0].GetProperty("measurements").GetProperty("temperature").GetDouble());
        Assert.True(readings[0].TryGetProperty("arrived", out _));

        var buckets = await s.Http.GetFromJsonAsync<JsonElement>("/api/devices/hist1/readings?bucket=1h");
        var light = buckets.EnumerateArray().Select(b => b.GetProperty("measurements").GetProperty("light")).ToList();
        Assert.Equal(3, buckets.EnumerateArray().Sum(b => b.GetProperty("count").GetInt64()));
        Assert.Equal(100, light.Min(l => l.GetProperty("min").GetDouble()));
        Assert.Equal(500, light.Max(l => l.GetProperty("max").GetDouble()));

        var info = await s.Http.GetFromJsonAsync<JsonElement>("/api/devices/hist1");
        Assert.Equal(300, info.GetProperty("lastReading").GetProperty("measurements").GetProperty("light").GetDouble());
        Assert.False(info.GetProperty("ledOn").GetBoolean());

        var missing = await s.Http.GetAsync("/api/devices/nobody");
        Assert.Equal(HttpStatusCode.NotFound, missing.StatusCode);
        Assert.Equal("application/problem+json", missing.Content.Headers.ContentType?.MediaType);
        var openapi = await s.Http.GetStringAsync("/openapi/v1.json");
        Assert.Contains("/api/devices/{id}/readings", openapi);
    }

    [Trait("Speed", "Slow")]
    [Fact]
    public async Task A_manual_command_is_acknowledged_and_holds_the_rule_back()
    {
        await using var s = await StartAsync();
        await using var device = await MqttProbe.ConnectAsync(s.MqttPort);
        await device.SubscribeAsync("+/commands", MqttQualityOfServiceLevel.AtLeastOnce);
        // A bright reading with seq: an SDK device, so its commands carry an id to acknowledge.
        await device.PublishAsync("man1/telemetry", "{\"light\": 800, \"seq\": 1}");
        await device.WaitForAsync(m => m.Topic == "man1/commands" && m.Payload.Contains("\"led_on\": false", StringComparison.Ordinal));

        var response = await s.Http.PostAsJsonAsync("/api/devices/man1/commands", new Dictionary<string, object> { ["led_on"] = true, ["overrideFor"] = "10m" });
        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        var command = await response.Content.ReadFromJsonAsync<JsonElement>();
        var id = command.GetProperty("id").GetString()!;
        Assert.Equal("manual", command.GetProperty("source").GetString());
        Assert.True(command.GetProperty("command").GetProperty("led_on").GetBoolean());

        var sent = await device.WaitForAsync(m => m.Topic == "man1/commands" && m.Payload.Contains(id, StringComparison.Ordinal));
        Assert.Contains("\"led_on\": true", sent[0].Payload);
        await device.PublishAsync("man1/acks", $"{{\"id\": \"{id}\", \"status\": \"acknowledged\"}}");
        var commands = await PollAsync(s.Http, "/api/devices/man1/commands", c => c[0].GetProperty("status").GetString() == "acknowledged");
        Assert.Equal(id, commands[0].GetProperty("id").GetString());
        Assert.Equal("rule", commands[1].GetProperty("source").GetString());

        // The rule would switch the LED off for this bright reading; the override holds it. Readings are handled in
        // order, so once the other device is answered, man1's reading has been decided.
        var before = device.Received.Count;
        await device.PublishAsync("man1/telemetry", "{\"light\": 900, \"seq\": 2}");
        await device.PublishAsync("other1/telemetry", "{\"light\": 900}");
        await device.WaitForAsync(m => m.Topic == "other1/commands");
        Assert.DoesNotContain(device.Received.Skip(before), m => m.Topic == "man1/commands");
        var device1 = await s.Http.GetFromJsonAsync<JsonElement>("/api/devices/man1");
        Assert.True(device1.GetProperty("ledOn").GetBoolean());
    }

    /// <summary>Posts a manual command that holds the rule back for ten minutes; returns its id.</summary>
    static async Task<string> PostCommandAsync(HttpClient http, string deviceId, bool ledOn)
    {
        var response = await http.PostAsJsonAsync($"/api/devices/{deviceId}/commands", new Dictionary<string, object> { ["led_on"] = ledOn, ["overrideFor"] = "10m" });
        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        return (await response.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("id").GetString()!;
    }

    static bool HasStatus(JsonElement commands, string id, string status) =>
        commands.EnumerateArray().Any(c => c.GetProperty("id").GetString() == id && c.GetProperty("status").GetString() == status);

    static CommandMessage Parse(string payload) =>
        CommandMessage.TryParse(Encoding.UTF8.GetBytes(payload), out var command, out var error) ? command : throw new InvalidOperationException(error);

    [Fact]
    public async Task A_command_a_device_never_acknowledges_is_resent_unchanged_then_expires_and_the_next_one_still_goes()
    {
        await using var s = await StartAsync(environment: new Dictionary<string, string>
        {
            ["NIGHTLIGHT_Commands__RetryInterval"] = "200ms",
            ["NIGHTLIGHT_Commands__Expiry"] = "1s",
        });
        await using var device = await MqttProbe.ConnectAsync(s.MqttPort);
        await device.SubscribeAsync("gone1/commands", MqttQualityOfServiceLevel.AtLeastOnce);
        // Presence says an SDK device, which acknowledges; without a reading the rule sends it nothing of its own.
        await device.PublishAsync("gone1/status", "{\"online\": true}");
        await PollAsync(s.Http, "/api/devices", d => d.EnumerateArray().Any(x => x.GetProperty("id").GetString() == "gone1"));

        var first = await PostCommandAsync(s.Http, "gone1", ledOn: true);
        await PollAsync(s.Http, "/api/devices/gone1/commands", c => HasStatus(c, first, "expired"));
        var attempts = device.Received.Where(m => m.Payload.Contains($"\"{first}\"", StringComparison.Ordinal)).ToList();
        Assert.True(attempts.Count >= 3, $"expected a resend every 200 ms until expiry, saw {attempts.Count} sends");
        // Every resend is the same command, with the same seq, so a device applies it once.
        Assert.All(attempts, m => Assert.Equal(attempts[0].Payload, m.Payload));
        var firstCommand = Parse(attempts[0].Payload);
        Assert.True(firstCommand.Ordered);
        Assert.Equal(true, firstCommand.LedOn);

        // The next command goes out although the first was never acknowledged; the device acknowledges this one.
        var second = await PostCommandAsync(s.Http, "gone1", ledOn: false);
        var sent = await device.WaitForAsync(m => m.Payload.Contains($"\"{second}\"", StringComparison.Ordinal));
        var secondCommand = Parse(sent[0].Payload);
        Assert.True(secondCommand.Seq > firstCommand.Seq);
        await device.PublishAsync("gone1/acks", new CommandAck(second, secondCommand.Seq!.Value).ToString(), MqttQualityOfServiceLevel.AtLeastOnce);
        var commands = await PollAsync(s.Http, "/api/devices/gone1/commands", c => HasStatus(c, second, "acknowledged"));
        Assert.True(HasStatus(commands, first, "expired"));
        var led = await s.Http.GetFromJsonAsync<JsonElement>("/api/devices/gone1");
        Assert.False(led.GetProperty("ledOn").GetBoolean());
    }

    [Fact]
    public async Task Presence_marks_a_device_online_and_offline()
    {
        await using var s = await StartAsync();
        await using var device = await MqttProbe.ConnectAsync(s.MqttPort);
        await device.PublishAsync("pres1/status", "{\"online\": true}", retain: true);
        await PollAsync(s.Http, "/api/devices", d => d.EnumerateArray().Any(x => x.GetProperty("id").GetString() == "pres1" &&
            x.GetProperty("online").ValueKind == JsonValueKind.True));

        await device.PublishAsync("pres1/status", "{\"online\": false}", retain: true);

        await PollAsync(s.Http, "/api/devices", d => d.EnumerateArray().Any(x => x.GetProperty("id").GetString() == "pres1" &&
            x.GetProperty("online").ValueKind == JsonValueKind.False));
    }

    [Trait("Speed", "Slow")]
    [Fact]
    public async Task Export_writes_the_stored_readings_as_csv_and_the_registry_survives_a_restart()
    {
        using var data = new TempDirectory("history");
        await using (var s = await StartAsync(data.Path))
        {
            await using var device = await MqttProbe.ConnectAsync(s.MqttPort);
            for (var i = 1; i <= 5; i++)
            {
                await device.PublishAsync("exp1/telemetry", $"{{\"light\": {i * 100}, \"seq\": {i}}}");
            }
            await PollAsync(s.Http, "/api/devices/exp1/readings", r => r.GetArrayLength() == 5);
        }

        var csv = Path.Combine(data.Path, "exp1.csv");
        var export = ProcessRunner.Run("dotnet", [NightlightCli.Dll, "export", "--device", "exp1", "--data", data.Path, "--out", csv], TimeSpan.FromSeconds(60));
        Assert.True(export.ExitCode == 0, export.Stderr);
        var lines = await File.ReadAllLinesAsync(csv);
        Assert.Equal("device,ts,arrived,seq,light", lines[0]);
        Assert.Equal(["100", "200", "300", "400", "500"], lines.Skip(1).Select(l => l.Split(',')[4]));
        Assert.Contains("exported 5 readings", export.Stderr);

        var unknown = ProcessRunner.Run("dotnet", [NightlightCli.Dll, "export", "--device", "nobody", "--data", data.Path], TimeSpan.FromSeconds(60));
        Assert.Equal(1, unknown.ExitCode);
        Assert.Contains("no device 'nobody'", unknown.Stderr);

        var (broker, mqtt, _) = await NightlightCli.StartBrokerAsync();
        await using (broker)
        {
            var http = Ports.Free();
            await using var server = NightlightCli.Start("server", "--broker", $"mqtt://127.0.0.1:{mqtt}", "--http-port", http.ToString(), "--data", data.Path);
            await server.WaitForErrorLineAsync("Server listening", Wait);
            using var client = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{http}") };
            var restarted = await client.GetFromJsonAsync<JsonElement>("/api/devices/exp1");
            Assert.Equal(5, restarted.GetProperty("lastReading").GetProperty("seq").GetInt64());
        }
    }
}
