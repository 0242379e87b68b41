using System.Globalization;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>
/// Devices over HTTP: <c>POST /api/devices/{id}/telemetry</c>, long-poll <c>GET /api/devices/{id}/commands/next</c>,
/// <c>POST /api/devices/{id}/acks</c>, against the real CLI (broker and server processes), beside an MQTT device.
/// </summary>
public class HttpDeviceTests
{
    static readonly TimeSpan Wait = TimeSpan.FromSeconds(30);

    static string Peer(string name) => Path.Combine(AppContext.BaseDirectory, "Peers", name);

    sealed class Setup : IAsyncDisposable
    {
        public required ProcessRunner Broker { get; init; }
        public required ProcessRunner Server { get; init; }
        public required int MqttPort { get; init; }
        public required int HttpPort { get; init; }
        public required HttpClient Http { get; init; }

        /// <summary>The server's data directory when this setup made it: deleted once the server has stopped.</summary>
        public TempDirectory? OwnedData { get; init; }

        public string Url => $"http://127.0.0.1:{HttpPort}";

        public async ValueTask DisposeAsync()
        {
            Http.Dispose();
            await Server.DisposeAsync();
            await Broker.DisposeAsync();
            OwnedData?.Dispose();
        }
    }

    /// <summary>A broker and a server (its HTTP API on a free port); <paramref name="data"/> holds the server's identities, else it gets a fresh directory of its own.</summary>
    static async Task<Setup> StartAsync(string? data = null)
    {
        var (broker, mqtt, _) = await NightlightCli.StartBrokerAsync();
        var http = Ports.Free();
        TempDirectory? owned = null;
        if (data is null)
        {
            owned = new TempDirectory("http");
            data = owned.Path;
        }
        var server = NightlightCli.Start("server", "--broker", $"mqtt://127.0.0.1:{mqtt}", "--http-port", http.ToString(CultureInfo.InvariantCulture), "--data", data);
        await server.StopIfNotReadyAsync(p => p.WaitForErrorLineAsync("Server listening", Wait), broker, owned);
        return new Setup
        {
            Broker = broker, Server = server, MqttPort = mqtt, HttpPort = http, OwnedData = owned,
            Http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{http}"), Timeout = TimeSpan.FromSeconds(90) },
        };
    }

    static HttpRequestMessage Request(HttpMethod method, string path, string? body = null, AuthenticationHeaderValue? auth = null)
    {
        var request = new HttpRequestMessage(method, path);
        if (body is not null)
        {
            request.Content = new StringContent(body, Encoding.UTF8, "application/json");
        }
        request.Headers.Authorization = auth;
        return request;
    }

    static AuthenticationHeaderValue Basic(string id, string secret) => new("Basic", Convert.ToBase64String(Encoding.UTF8.GetBytes($"{id}:{secret}")));

    static Task<HttpResponseMessage> PostTelemetryAsync(HttpClient http, string id, string body, AuthenticationHeaderValue? auth = null) =>
        http.SendAsync(Request(HttpMethod.Post, $"/api/devices/{id}/telemetry", body, auth));

    static async Task<JsonElement> PollAsync(HttpClient http, string path, Func<JsonElement, bool> done)
    {
        var deadline = DateTime.UtcNow + Wait;
        while (true)
        {
            var response = await http.GetAsync(path);
            var text = await response.Content.ReadAsStringAsync();
            if (response.StatusCode == HttpStatusCode.OK)
            {
                var json = JsonDocument.Parse(text).RootElement.Clone();
                if (done(json))
                {
                    return json;
                }
            }
            if (DateTime.UtcNow > deadline)
            {
                Assert.Fail($"GET {path} never got there; last answer {(int)response.StatusCode}: {text}");
            }
            await Task.Delay(200);
        }
    }

    /// <summary>The properties of a JSON object, names and kinds, recursively: what a client sees of its shape.</summary>
    static string Shape(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.Object => "{" + string.Join(",", e.EnumerateObject().Select(p => p.Name + ":" + Shape(p.Value))) + "}",
        JsonValueKind.Array => "[" + string.Join(",", e.EnumerateArray().Select(Shape).Distinct()) + "]",
        _ => e.ValueKind.ToString(),
    };

    [Fact]
    public async Task An_http_device_is_stored_answered_and_shown_exactly_as_an_mqtt_device()
    {
        await using var s = await StartAsync();
        await using var mqttDevice = await MqttProbe.ConnectAsync(s.MqttPort);
        await mqttDevice.SubscribeAsync("viamqtt/commands");
        await mqttDevice.PublishAsync("viamqtt/telemetry", "{\"light\": 120, \"temperature\": 18.5}");

        var posted = await PostTelemetryAsync(s.Http, "viahttp", "{\"light\": 120, \"temperature\": 18.5}");
        Assert.Equal(HttpStatusCode.Accepted, posted.StatusCode);
        var next = await s.Http.GetAsync("/api/devices/viahttp/commands/next?wait=30s");
        Assert.Equal(HttpStatusCode.OK, next.StatusCode);
        Assert.Equal("{\"led_on\": true}", await next.Content.ReadAsStringAsync());
        Assert.Equal("application/json", next.Content.Headers.ContentType?.MediaType);
        await mqttDevice.WaitForAsync(m => m.Topic == "viamqtt/commands" && m.Payload == "{\"led_on\": true}");

        var viaMqtt = await PollAsync(s.Http, "/api/devices/viamqtt", d => d.GetProperty("ledOn").ValueKind == JsonValueKind.True);
        var viaHttp = await PollAsync(s.Http, "/api/devices/viahttp", d => d.GetProperty("ledOn").ValueKind == JsonValueKind.True);
        Assert.Equal(Shape(viaMqtt), Shape(viaHttp));
        Assert.Equal(viaMqtt.GetProperty("lastReading").GetProperty("measurements").ToString(), viaHttp.GetProperty("lastReading").GetProperty("measurements").ToString());

        var readingsMqtt = await PollAsync(s.Http, "/api/devices/viamqtt/readings", r => r.GetArrayLength() == 1);
        var readingsHttp = await PollAsync(s.Http, "/api/devices/viahttp/readings", r => r.GetArrayLength() == 1);
        Assert.Equal(Shape(readingsMqtt), Shape(readingsHttp));
        Assert.Equal(18.5, readingsHttp[0].GetProperty("measurements").GetProperty("temperature").GetDouble());

        // The LED changed, so both commands are tracked; fetching the HTTP one is its delivery.
        var commandsMqtt = await PollAsync(s.Http, "/api/devices/viamqtt/commands", c => c.GetArrayLength() == 1 && c[0].GetProperty("status").GetString() == "delivered");
        var commandsHttp = await PollAsync(s.Http, "/api/devices/viahttp/commands", c => c.GetArrayLength() == 1 && c[0].GetProperty("status").GetString() == "delivered");
        Assert.Equal(Shape(commandsMqtt), Shape(commandsHttp));
        Assert.Equal("rule", commandsHttp[0].GetProperty("source").GetString());

        // The server answers the HTTP device as the lesson's server answers every reading.
        await s.Server.WaitForCountAsync(l => l.Contains("Message received: {\"light\": 120, \"temperature\": 18.5}", StringComparison.Ordinal), 2,
            "the lesson line for each device's reading");
    }

    [Trait("Speed", "Slow")]
    [Fact]
    public async Task The_long_poll_returns_a_queued_command_and_204_when_none_comes()
    {
        await using var s = await StartAsync();
        var empty = await s.Http.GetAsync("/api/devices/poll1/commands/next?wait=1s");
        Assert.Equal(HttpStatusCode.NoContent, empty.StatusCode);

        // Waiting first, then the reading: the poll is woken by the command (a 30 s wait that ends with a body).
        var waiting = s.Http.GetAsync("/api/devices/poll1/commands/next?wait=30s");
        await Task.Delay(500);
        Assert.False(waiting.IsCompleted);
        Assert.Equal(HttpStatusCode.Accepted, (await PostTelemetryAsync(s.Http, "poll1", "{\"light\": 900}")).StatusCode);
        var answered = await waiting;
        Assert.Equal(HttpStatusCode.OK, answered.StatusCode);
        Assert.Equal("{\"led_on\": false}", await answered.Content.ReadAsStringAsync());

        // Fetched once: the next poll has nothing.
        Assert.Equal(HttpStatusCode.NoContent, (await s.Http.GetAsync("/api/devices/poll1/commands/next?wait=0s")).StatusCode);

        var bad = await s.Http.GetAsync("/api/devices/poll1/commands/next?wait=5h");
        Assert.Equal(HttpStatusCode.BadRequest, bad.StatusCode);
        Assert.Contains("wait must be a duration", await bad.Content.ReadAsStringAsync());
    }

    [Fact]
    public async Task A_device_that_numbers_its_readings_gets_ordered_commands_and_its_ack_marks_them_acknowledged()
    {
        await using var s = await StartAsync();
        Assert.Equal(HttpStatusCode.Accepted, (await PostTelemetryAsync(s.Http, "acker1", "{\"light\": 50, \"seq\": 1}")).StatusCode);
        var next = await s.Http.GetAsync("/api/devices/acker1/commands/next?wait=30s");
        Assert.Equal(HttpStatusCode.OK, next.StatusCode);
        var command = await next.Content.ReadFromJsonAsync<JsonElement>();
        Assert.True(command.GetProperty("led_on").GetBoolean());
        Assert.True(command.GetProperty("ordered").GetBoolean());
        var id = command.GetProperty("id").GetString()!;
        await PollAsync(s.Http, "/api/devices/acker1/commands", c => c[0].GetProperty("id").GetString() == id && c[0].GetProperty("status").GetString() == "delivered");

        var ack = $"{{\"id\": \"{id}\", \"seq\": {command.GetProperty("seq").GetInt64()}, \"status\": \"acknowledged\"}}";
        Assert.Equal(HttpStatusCode.Accepted, (await s.Http.SendAsync(Request(HttpMethod.Post, "/api/devices/acker1/acks", ack))).StatusCode);
        await PollAsync(s.Http, "/api/devices/acker1/commands", c => c[0].GetProperty("id").GetString() == id && c[0].GetProperty("status").GetString() == "acknowledged");

        var badAck = await s.Http.SendAsync(Request(HttpMethod.Post, "/api/devices/acker1/acks", "{\"id\": 5}"));
        Assert.Equal(HttpStatusCode.BadRequest, badAck.StatusCode);
    }

    [Fact]
    public async Task Bad_telemetry_over_http_is_a_400_problem_counted_and_logged_once()
    {
        await using var s = await StartAsync();
        var response = await PostTelemetryAsync(s.Http, "bad1", "{\"light\": \"dark\"}");
        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Equal("application/problem+json", response.Content.Headers.ContentType?.MediaType);
        var problem = await response.Content.ReadFromJsonAsync<JsonElement>();
        Assert.Equal("Bad telemetry", problem.GetProperty("title").GetString());
        Assert.Contains("light", problem.GetProperty("detail").GetString());

        var notJson = await PostTelemetryAsync(s.Http, "bad1", "light=12");
        Assert.Equal(HttpStatusCode.BadRequest, notJson.StatusCode);
        var tooBig = await PostTelemetryAsync(s.Http, "bad1", "{\"light\": 1, \"note\": \"" + new string('x', 20_000) + "\"}");
        Assert.Equal(HttpStatusCode.BadRequest, tooBig.StatusCode);

        var metrics = await s.Http.GetStringAsync("/metrics");
        var rejected = metrics.Split('\n').First(l => l.StartsWith("nightlight_telemetry_rejected", StringComparison.Ordinal));
        Assert.Equal(3, double.Parse(rejected.Split(' ')[^1], CultureInfo.InvariantCulture));
        await s.Server.WaitForErrorLineAsync("Rejected telemetry from device bad1 over HTTP");
        Assert.Equal(3, s.Server.StderrLines.Count(l => l.Contains("Rejected telemetry from device bad1 over HTTP", StringComparison.Ordinal)));
        // Nothing of it was stored: the device was never seen.
        Assert.Equal(HttpStatusCode.NotFound, (await s.Http.GetAsync("/api/devices/bad1")).StatusCode);
    }

    [Fact]
    public async Task Missing_or_wrong_credentials_are_refused_and_a_device_cannot_act_for_another()
    {
        using var data = new DataDir();
        var secretA = data.Add("deva");
        var secretB = data.Add("devb");
        await using var s = await StartAsync(data.Path);
        const string reading = "{\"light\": 100}";

        var none = await PostTelemetryAsync(s.Http, "deva", reading);
        Assert.Equal(HttpStatusCode.Unauthorized, none.StatusCode);
        Assert.StartsWith("Basic", none.Headers.WwwAuthenticate.ToString());
        Assert.Equal(HttpStatusCode.Unauthorized, (await PostTelemetryAsync(s.Http, "deva", reading, Basic("deva", secretB))).StatusCode);
        Assert.Equal(HttpStatusCode.Unauthorized, (await PostTelemetryAsync(s.Http, "deva", reading, new AuthenticationHeaderValue("Bearer", "not-the-secret"))).StatusCode);
        Assert.Equal(HttpStatusCode.Unauthorized, (await PostTelemetryAsync(s.Http, "nobody", reading, Basic("nobody", "x"))).StatusCode);

        // A valid device acting for another: forbidden, for telemetry and for the other's commands.
        var forOther = await PostTelemetryAsync(s.Http, "devb", reading, Basic("deva", secretA));
        Assert.Equal(HttpStatusCode.Forbidden, forOther.StatusCode);
        Assert.Contains("may not act for device 'devb'", await forOther.Content.ReadAsStringAsync());
        Assert.Equal(HttpStatusCode.Unauthorized, (await PostTelemetryAsync(s.Http, "devb", reading, new AuthenticationHeaderValue("Bearer", secretA))).StatusCode);
        Assert.Equal(HttpStatusCode.Forbidden, (await s.Http.SendAsync(Request(HttpMethod.Get, "/api/devices/devb/commands/next?wait=0s", auth: Basic("deva", secretA)))).StatusCode);
        Assert.Equal(HttpStatusCode.Unauthorized, (await s.Http.GetAsync("/api/devices/deva/commands/next?wait=0s")).StatusCode);
        Assert.Equal(HttpStatusCode.NotFound, (await s.Http.GetAsync("/api/devices/devb")).StatusCode);

        // Its own id, with its own secret, either way.
        Assert.Equal(HttpStatusCode.Accepted, (await PostTelemetryAsync(s.Http, "deva", reading, Basic("deva", secretA))).StatusCode);
        Assert.Equal(HttpStatusCode.Accepted, (await PostTelemetryAsync(s.Http, "devb", reading, new AuthenticationHeaderValue("Bearer", secretB))).StatusCode);
        var next = await s.Http.SendAsync(Request(HttpMethod.Get, "/api/devices/deva/commands/next?wait=30s", auth: Basic("deva", secretA)));
        Assert.Equal("{\"led_on\": true}", await next.Content.ReadAsStringAsync());
        await PollAsync(s.Http, "/api/devices/devb", d => d.GetProperty("lastReading").ValueKind == JsonValueKind.Object);
        await s.Server.WaitForErrorLineAsync("Refused POST /api/devices/devb/telemetry for device devb: device 'deva' may not act for device 'devb'");
    }

    [Fact]
    public async Task The_cli_device_over_http_follows_the_server_and_a_manual_command()
    {
        await using var s = await StartAsync();
        await using var device = NightlightCli.Start("device", "--transport", "http", "--server", s.Url, "--id", "clihttp", "--light", "80", "--interval", "300ms");
        await device.WaitForLineAsync("over HTTP to " + s.Url);
        await device.WaitForLineAsync("LED switched ON");

        var manual = await s.Http.PostAsJsonAsync("/api/devices/clihttp/commands", new { led_on = false, overrideFor = "5m" });
        Assert.Equal(HttpStatusCode.Accepted, manual.StatusCode);
        await device.WaitForLineAsync("LED switched OFF");
        await PollAsync(s.Http, "/api/devices/clihttp/commands", c => c.EnumerateArray().Any(x =>
            x.GetProperty("source").GetString() == "manual" && x.GetProperty("status").GetString() == "delivered"));
    }

    [Trait("Speed", "Slow")]
    [Fact]
    public async Task A_python_requests_device_is_answered_over_http_with_its_secret()
    {
        const string python = "/usr/bin/python3";
        if (!File.Exists(python) || ProcessRunner.Run(python, ["-c", "import requests"], TimeSpan.FromSeconds(20)).ExitCode != 0)
        {
            const string message = "/usr/bin/python3 with requests is not installed (Debian package python3-requests)";
            if (External.Required)
            {
                Assert.Fail(message + " and NIGHTLIGHT_REQUIRE_EXTERNAL is set");
            }
            Assert.Skip(message);
        }
        using var data = new DataDir();
        var secret = data.Add("pyhttp");
        await using var s = await StartAsync(data.Path);

        await using var device = ProcessRunner.Start(python, [Peer("http_device.py"), s.Url, "pyhttp", "120", "3", secret]);
        Assert.True(await device.WaitForExitAsync(Wait), device.Describe());
        Assert.Equal(0, device.ExitCode);
        Assert.Equal(3, device.StdoutLines.Count(l => l == "Message received: {\"led_on\": true}"));
        await s.Server.WaitForCountAsync(l => l.Contains("Message received: {\"light\": 120}", StringComparison.Ordinal), 3, "the three readings");
        var readings = await PollAsync(s.Http, "/api/devices/pyhttp/readings", r => r.GetArrayLength() == 3);
        Assert.All(readings.EnumerateArray(), r => Assert.Equal(120, r.GetProperty("measurements").GetProperty("light").GetDouble()));

        // The same script without the secret is refused, and says so.
        await using var anonymous = ProcessRunner.Start(python, [Peer("http_device.py"), s.Url, "pyhttp", "120", "1"]);
        Assert.True(await anonymous.WaitForExitAsync(Wait), anonymous.Describe());
        Assert.Equal(1, anonymous.ExitCode);
        Assert.Contains("Refused: 401", anonymous.Stdout);
    }

    [Fact]
    public async Task The_dashboard_of_up_shows_an_http_device_reading_and_its_command()
    {
        var http = Ports.Free();
        await using var up = NightlightCli.Start("up", "--mqtt-port", Ports.Free().ToString(CultureInfo.InvariantCulture), "--http-port", http.ToString(CultureInfo.InvariantCulture), "--no-status");
        await up.WaitForErrorLineAsync("Server listening", Wait);
        using var client = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{http}"), Timeout = Wait };
        using var events = await client.GetStreamAsync("/api/events");
        using var reader = new StreamReader(events);
        Assert.Equal(HttpStatusCode.Accepted, (await PostTelemetryAsync(client, "dashhttp", "{\"light\": 42}")).StatusCode);

        var seen = new List<string>();
        using var timeout = new CancellationTokenSource(Wait);
        while (!(seen.Any(l => l.Contains("\"dashhttp\"") && l.Contains("\"light\":42")) && seen.Any(l => l.Contains("\"dashhttp\"") && l.Contains("\"ledOn\":true"))))
        {
            var line = await reader.ReadLineAsync(timeout.Token) ?? throw new InvalidOperationException("the event stream ended");
            if (line.StartsWith("data:", StringComparison.Ordinal))
            {
                seen.Add(line);
            }
        }
    }
}
