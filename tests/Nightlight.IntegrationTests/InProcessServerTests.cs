using System.Buffers;
using System.Collections.Concurrent;
using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using MQTTnet.Protocol;
using Nightlight.Broker;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>
/// The server in the embedded broker's process reads and publishes in memory (Server:InProcess): devices and every
/// other MQTT client must see what they saw when the server came over loopback TCP.
/// </summary>
public class InProcessServerTests
{
    static readonly TimeSpan Wait = TimeSpan.FromSeconds(30);

    static string Peer(string name) => Path.Combine(AppContext.BaseDirectory, "Peers", name);

    sealed record Up(ProcessRunner Process, int MqttPort, HttpClient Http) : IAsyncDisposable
    {
        public async ValueTask DisposeAsync()
        {
            Http.Dispose();
            await Process.DisposeAsync();
        }
    }

    /// <summary><c>nightlight up --no-device</c> on free ports; returns once the server has its link to the broker.</summary>
    static async Task<Up> StartUpAsync(string expectedLink, Dictionary<string, string>? environment = null)
    {
        var mqtt = Ports.Free();
        var http = Ports.Free();
        var process = NightlightCli.StartWith(environment ?? [], "up", "--no-device", "--mqtt-port", mqtt.ToString(), "--http-port", http.ToString(), "--no-status");
        var line = await process.WaitForErrorLineAsync("Server link to the broker", Wait);
        Assert.Contains(expectedLink, line);
        return new Up(process, mqtt, new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{http}") });
    }

    static async Task<JsonElement> PollAsync(HttpClient http, string path, Func<JsonElement, bool> done)
    {
        var deadline = DateTime.UtcNow + Wait;
        while (true)
        {
            var response = await http.GetAsync(path);
            var body = await response.Content.ReadAsStringAsync();
            if (response.StatusCode == HttpStatusCode.OK && done(JsonDocument.Parse(body).RootElement))
            {
                return JsonDocument.Parse(body).RootElement;
            }
            Assert.True(DateTime.UtcNow < deadline, $"GET {path} never got there; last answer {(int)response.StatusCode}: {body}");
            await Task.Delay(200);
        }
    }

    static async Task<double> MetricAsync(HttpClient http, string name)
    {
        var line = (await http.GetStringAsync("/metrics")).Split('\n').FirstOrDefault(l => l.StartsWith(name, StringComparison.Ordinal));
        return line is null ? 0 : double.Parse(line.Split(' ')[^1], System.Globalization.CultureInfo.InvariantCulture);
    }

    [Fact]
    public async Task The_lesson_python_device_gets_its_commands_and_a_third_party_subscriber_sees_telemetry_and_commands()
    {
        var python = External.RequirePahoPython();
        await using var up = await StartUpAsync("in process");
        await using var watcher = await MqttProbe.ConnectAsync(up.MqttPort, clientId: "watcher");
        await watcher.SubscribeAsync("+/telemetry");
        await watcher.SubscribeAsync("+/commands", MqttQualityOfServiceLevel.AtLeastOnce);

        await using var device = ProcessRunner.Start(python, [Peer("lesson_device.py"), "inproc1", "127.0.0.1", up.MqttPort.ToString(), "120", "5"]);
        await device.WaitForLineAsync("Message received: {\"led_on\": true}", Wait);
        Assert.True(await device.WaitForExitAsync(Wait), device.Describe());
        Assert.Equal(0, device.ExitCode);

        await watcher.WaitForAsync(m => m.Topic == "inproc1/telemetry" && m.Payload.Contains("120", StringComparison.Ordinal));
        await watcher.WaitForAsync(m => m.Topic == "inproc1/commands" && m.Payload == "{\"led_on\": true}");
        Assert.True(await MetricAsync(up.Http, "nightlight_telemetry_received") >= 1, "the server counted the readings");
    }

    [Fact]
    public async Task Acks_and_presence_of_a_device_reach_the_in_process_server()
    {
        await using var up = await StartUpAsync("in process");
        // Our SDK device: it announces itself on {id}/status and acknowledges ordered commands on {id}/acks.
        await using var device = NightlightCli.Start("device", "--broker", $"mqtt://127.0.0.1:{up.MqttPort}", "--id", "ack1", "--light", "900", "--interval", "300ms");
        await PollAsync(up.Http, "/api/devices/ack1", d => d.GetProperty("online").ValueKind == JsonValueKind.True);

        var response = await up.Http.PostAsJsonAsync("/api/devices/ack1/commands", new Dictionary<string, object> { ["led_on"] = true, ["overrideFor"] = "1m" });
        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        var id = (await response.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("id").GetString()!;
        await device.WaitForLineAsync("LED switched ON", Wait);
        await PollAsync(up.Http, "/api/devices/ack1/commands", c => c.EnumerateArray().Any(x =>
            x.GetProperty("id").GetString() == id && x.GetProperty("status").GetString() == "acknowledged"));
    }

    [Fact]
    public async Task Bad_telemetry_is_counted_and_the_next_device_is_still_answered()
    {
        await using var up = await StartUpAsync("in process");
        await using var client = await MqttProbe.ConnectAsync(up.MqttPort, clientId: "mixed");
        await client.SubscribeAsync("good1/commands");
        await client.PublishAsync("bad1/telemetry", "{\"light\": \"dark\"}");
        await client.PublishAsync("bad2/telemetry", new byte[] { 0xff, 0xfe, 0x00 });
        await client.PublishAsync("good1/telemetry", "{\"light\": 100}");
        await client.WaitForAsync(m => m.Topic == "good1/commands" && m.Payload == "{\"led_on\": true}");
        // Readings are handled in order, so the bad ones were decided on before good1's answer left.
        Assert.True(await MetricAsync(up.Http, "nightlight_telemetry_rejected") >= 2, "both bad readings were counted");
        Assert.Contains(up.Process.StderrLines, l => l.Contains("Rejected telemetry from device bad1", StringComparison.Ordinal));
    }

    [Fact]
    public async Task With_Server_InProcess_false_the_server_connects_over_loopback_mqtt_and_still_answers()
    {
        await using var up = await StartUpAsync("MQTT connection over loopback", new() { ["NIGHTLIGHT_Server__InProcess"] = "false" });
        await using var client = await MqttProbe.ConnectAsync(up.MqttPort, clientId: "old-path");
        await client.SubscribeAsync("tcp1/commands");
        await client.PublishAsync("tcp1/status", "{\"online\": true}", retain: true);
        await client.PublishAsync("tcp1/telemetry", "{\"light\": 700}");
        // A device that announces presence is an SDK device: its command carries an id to acknowledge.
        await client.WaitForAsync(m => m.Topic == "tcp1/commands" && m.Payload.StartsWith("{\"led_on\": false", StringComparison.Ordinal));
        await PollAsync(up.Http, "/api/devices/tcp1", d => d.GetProperty("online").ValueKind == JsonValueKind.True);
    }

    /// <summary>
    /// Regression: the dashboard's device list counted its devices with ConcurrentDictionary.Count, which takes every
    /// lock of the dictionary, on every reading of an unlisted device; the in-process link reads on many threads at once.
    /// And its first replacement reserved a place before adding, so two threads adding the same device held two places
    /// for a moment and a third device was turned away with room left (999 listed in a CI run).
    /// </summary>
    [Fact]
    public void The_dashboard_lists_at_most_its_limit_of_devices_when_readings_arrive_on_many_threads()
    {
        // Several rounds: the race shows only now and then.
        for (var round = 0; round < 30; round++)
        {
            var fresh = new Nightlight.Web.LiveDevices(TimeProvider.System);
            Parallel.For(0, 3 * Nightlight.Web.LiveDevices.MaxDevices, i =>
                fresh.Add(new Nightlight.Protocol.TelemetryMessage($"d{i % (2 * Nightlight.Web.LiveDevices.MaxDevices)}", 100, new Dictionary<string, double> { ["light"] = 100 }, null, null)));
            Assert.Equal(Nightlight.Web.LiveDevices.MaxDevices, fresh.Snapshot().Count);
        }
        var devices = new Nightlight.Web.LiveDevices(TimeProvider.System);
        Parallel.For(0, 3 * Nightlight.Web.LiveDevices.MaxDevices, i =>
            devices.Add(new Nightlight.Protocol.TelemetryMessage($"d{i % (2 * Nightlight.Web.LiveDevices.MaxDevices)}", 100, new Dictionary<string, double> { ["light"] = 100 }, null, null)));
        var listed = devices.Snapshot();
        Assert.Equal(Nightlight.Web.LiveDevices.MaxDevices, listed.Count);
        var first = listed[0].Id;
        Assert.NotNull(devices.Add(new Nightlight.Protocol.TelemetryMessage(first, 5, new Dictionary<string, double> { ["light"] = 5 }, null, null)));
        Assert.Null(devices.Add(new Nightlight.Protocol.TelemetryMessage("newcomer", 5, new Dictionary<string, double> { ["light"] = 5 }, null, null)));
    }

    /// <summary>
    /// In <c>up</c> the server attaches within moments of the broker starting, so the case is driven here with the
    /// broker alone, in this process: presence retained before an in-process client starts must reach it, and before
    /// any live message of the same topic that arrives after it.
    /// </summary>
    [Fact]
    public async Task Presence_retained_before_an_in_process_client_starts_reaches_it_first()
    {
        var port = Ports.Free();
        using var data = new TempDirectory("inproc");
        var builder = WebApplication.CreateEmptyBuilder(new WebApplicationOptions());
        builder.Configuration.AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Broker:MqttPort"] = port.ToString(),
            ["Data:Directory"] = data.Path,
        });
        builder.WebHost.UseKestrelCore();
        builder.Services.AddLogging();
        builder.Services.AddRouting();
        builder.AddEmbeddedBroker();
        await using var app = builder.Build();
        await app.StartAsync();

        await using var device = await MqttProbe.ConnectAsync(port, clientId: "early1");
        await device.PublishAsync("early1/status", "{\"online\": true}", MqttQualityOfServiceLevel.AtLeastOnce, retain: true);
        await device.PublishAsync("early1/telemetry", "{\"light\": 1}", MqttQualityOfServiceLevel.AtLeastOnce);

        var received = new ConcurrentQueue<(string Topic, string Payload)>();
        using var client = app.Services.GetRequiredService<InProcessClients>().Create("nightlight_server-test", ["+/status", "+/telemetry"],
            (topic, payload) => received.Enqueue((topic, Encoding.UTF8.GetString(payload.ToArray()))));
        await client.StartAsync(TestContext.Current.CancellationToken);
        Assert.True(client.IsConnected);
        Assert.Equal([("early1/status", "{\"online\": true}")], received.ToArray());

        await device.PublishAsync("early1/status", "{\"online\": false}", MqttQualityOfServiceLevel.AtLeastOnce, retain: true);
        await device.PublishAsync("early1/telemetry", "{\"light\": 2}", MqttQualityOfServiceLevel.AtLeastOnce);
        Assert.Equal([("early1/status", "{\"online\": true}"), ("early1/status", "{\"online\": false}"), ("early1/telemetry", "{\"light\": 2}")], received.ToArray());
        await app.StopAsync();
    }
}
