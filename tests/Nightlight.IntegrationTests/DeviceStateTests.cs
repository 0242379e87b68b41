using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using MQTTnet;
using MQTTnet.Formatter;
using MQTTnet.Protocol;
using Nightlight.Protocol;
using Nightlight.Tests.Support;
using static Microsoft.Playwright.Assertions;

namespace Nightlight.Tests;

/// <summary>
/// Desired and reported state per device and switch (issue 31): what the server wants, what the device said it did,
/// and a device that comes back gets the desired state at once. Real broker, server and device processes; the
/// network is cut with a TCP proxy.
/// </summary>
public class DeviceStateTests(ITestOutputHelper output)
{
    static readonly TimeSpan Long = TimeSpan.FromSeconds(60);

    static int Count(ProcessRunner process, string text) => process.StdoutLines.Count(l => l.Contains(text, StringComparison.Ordinal));

    static string? LastLed(ProcessRunner device) => device.StdoutLines.LastOrDefault(l => l.Contains("LED switched", StringComparison.Ordinal));

    /// <summary>Polls <paramref name="path"/> until <paramref name="done"/> holds for its JSON; fails with the last answer.</summary>
    static async Task<JsonElement> PollAsync(HttpClient http, string path, Func<JsonElement, bool> done, ProcessRunner server, TimeSpan? timeout = null)
    {
        var deadline = DateTime.UtcNow + (timeout ?? Long);
        var last = "";
        while (DateTime.UtcNow < deadline)
        {
            var response = await http.GetAsync(path);
            last = $"{(int)response.StatusCode} {await response.Content.ReadAsStringAsync()}";
            if (response.StatusCode == HttpStatusCode.OK)
            {
                var json = JsonDocument.Parse(last[4..]).RootElement;
                if (done(json))
                {
                    return json;
                }
            }
            await Task.Delay(200);
        }
        Assert.Fail($"GET {path} never got there; last answer {last}\n{server.Describe()}");
        return default;
    }

    static async Task<string> PostAsync(HttpClient http, string deviceId, string body)
    {
        var response = await http.PostAsync($"/api/devices/{deviceId}/commands", new StringContent(body, System.Text.Encoding.UTF8, "application/json"));
        Assert.True(response.StatusCode == HttpStatusCode.Accepted, $"POST {body}: {(int)response.StatusCode} {await response.Content.ReadAsStringAsync()}");
        return (await response.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("id").GetString()!;
    }

    static JsonElement Switch(JsonElement device, string name) => device.GetProperty("state").GetProperty(name);

    static bool? Bool(JsonElement element, string property) =>
        element.TryGetProperty(property, out var value) && value.ValueKind is JsonValueKind.True or JsonValueKind.False ? value.GetBoolean() : null;

    static string? StatusOf(JsonElement commands, string id) =>
        commands.EnumerateArray().Where(c => c.GetProperty("id").GetString() == id).Select(c => c.GetProperty("status").GetString()).FirstOrDefault();

    /// <summary>
    /// Issue 31, bullets 1 and 2: five manual commands posted while the device was cut off ended with four of them
    /// expired unsent and the last one expiring before the device was back, so the LED stayed in the old state while
    /// the API said it had changed. Now the API says what the device did (and that it differs from what is wanted)
    /// during the outage, and the device gets the desired state as soon as it is back.
    /// </summary>
    [Fact]
    public async Task Manual_commands_during_an_outage_leave_the_device_in_the_desired_state_and_the_api_honest()
    {
        var (broker, mqttPort, _) = await NightlightCli.StartBrokerAsync();
        await using var _broker = broker;
        await using var proxy = TcpProxy.Start(mqttPort);
        await using var probe = await MqttProbe.ConnectAsync(mqttPort);
        await probe.SubscribeAsync(Topics.Status("st1"), MqttQualityOfServiceLevel.AtLeastOnce);
        var serverHttp = Ports.Free();
        // A short expiry, so the last command expires during the outage, as the issue's did with the default 30 s.
        await using var server = NightlightCli.StartWith(new Dictionary<string, string> { ["NIGHTLIGHT_Commands__Expiry"] = "3s" },
            "server", "--broker", $"mqtt://127.0.0.1:{mqttPort}", "--http-port", serverHttp.ToString(), "--quiet");
        await server.StopIfNotReadyAsync(p => p.WaitForErrorLineAsync("Server listening", Long));
        using var data = new TempDirectory("device");
        await using var device = NightlightCli.Start("device", "--broker", proxy.Url, "--id", "st1", "--data", data.Path, "--interval", "500ms", "--light", "500");
        using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{serverHttp}") };

        // Online at light 500 the rule says off, and the device reports it.
        await device.WaitForLineAsync("LED switched OFF", Long);
        await PollAsync(http, "/api/devices/st1", d => d.TryGetProperty("state", out var s) && s.TryGetProperty("led_on", out var led) &&
            Bool(led, "reported") == false && Bool(led, "inSync") == true, server);
        var onBefore = Count(device, "LED switched ON");

        proxy.Cut();
        await PollAsync(http, "/api/devices/st1", d => Bool(d, "online") == false, server);
        var ids = new List<string>();
        foreach (var on in new[] { true, false, true, false, true })
        {
            ids.Add(await PostAsync(http, "st1", $"{{\"led_on\": {(on ? "true" : "false")}, \"overrideFor\": \"10m\"}}"));
        }

        // Latest wins: the four older ones are superseded, the last expires unacknowledged. The API still says what the
        // device did (LED off) and that it is not what is wanted.
        var history = await PollAsync(http, "/api/devices/st1/commands", c => StatusOf(c, ids[^1]) == "expired", server);
        Assert.All(ids[..^1], id => Assert.Equal("superseded", StatusOf(history, id)));
        var during = await PollAsync(http, "/api/devices/st1", _ => true, server);
        Assert.False(Bool(during, "ledOn"));
        var led = Switch(during, "led_on");
        Assert.True(Bool(led, "desired"));
        Assert.Equal("manual", led.GetProperty("source").GetString());
        Assert.True(led.GetProperty("until").GetDateTimeOffset() > DateTimeOffset.UtcNow.AddMinutes(9));
        Assert.False(Bool(led, "reported"));
        Assert.False(Bool(led, "inSync"));
        Assert.Equal(onBefore, Count(device, "LED switched ON"));

        // Back: the device gets the desired state at once, and says so.
        static bool Online((string Topic, string Payload, bool Retained) m) => m.Topic == "st1/status" && m.Payload.Contains("\"online\": true", StringComparison.Ordinal);
        var onlineBefore = probe.Received.Count(Online);
        proxy.Restore();
        await probe.WaitForAsync(Online, count: onlineBefore + 1, timeout: Long);
        var back = DateTime.UtcNow;
        await device.WaitForCountAsync(l => l.Contains("LED switched ON", StringComparison.Ordinal), onBefore + 1, "LED switched ON after the outage", Long);
        var late = DateTime.UtcNow - back;
        output.WriteLine($"LED on {late.TotalMilliseconds:0} ms after the device's presence said it was back");
        Assert.True(late < TimeSpan.FromSeconds(5), $"the desired state came {late.TotalSeconds:0.0} s after the device was back");
        var after = await PollAsync(http, "/api/devices/st1", d => Bool(Switch(d, "led_on"), "inSync") == true, server);
        Assert.True(Bool(after, "ledOn"));
        Assert.True(Bool(Switch(after, "led_on"), "reported"));
        // The override holds: the rule (off at 500) does not switch it back.
        await Task.Delay(2000);
        Assert.Contains("LED switched ON", LastLed(device));
        var commands = await http.GetFromJsonAsync<JsonElement>("/api/devices/st1/commands");
        Assert.Contains(commands.EnumerateArray(), c => c.GetProperty("status").GetString() == "acknowledged" &&
            c.GetProperty("command").GetProperty("led_on").GetBoolean() && c.GetProperty("source").GetString() == "manual");
    }

    /// <summary>
    /// Issue 31, bullet 3: the thermostat could not be controlled. No rule emitted <c>heating_on</c>, a manual
    /// <c>{"heating_on": true}</c> was refused, and it acknowledged <c>{"led_on": true}</c> it ignored. Now a rule over
    /// <c>temperature</c> drives <c>heating_on</c> with hysteresis, the API takes the switch the device declares, and the
    /// thermostat refuses (with a reason) what it cannot do.
    /// </summary>
    [Fact]
    public async Task The_thermostat_heats_when_cold_and_stops_when_warm_through_the_server()
    {
        var (broker, mqttPort, _) = await NightlightCli.StartBrokerAsync();
        await using var _broker = broker;
        var serverHttp = Ports.Free();
        await using var server = NightlightCli.StartWith(new Dictionary<string, string>
            {
                ["NIGHTLIGHT_Rules__Devices__th1__Measurement"] = "temperature",
                ["NIGHTLIGHT_Rules__Devices__th1__Switch"] = "heating_on",
                ["NIGHTLIGHT_Rules__Devices__th1__On"] = "19",
                ["NIGHTLIGHT_Rules__Devices__th1__Off"] = "21",
                ["NIGHTLIGHT_Rules__Devices__th1__Answer"] = "changes",
            },
            "server", "--broker", $"mqtt://127.0.0.1:{mqttPort}", "--http-port", serverHttp.ToString(), "--quiet");
        await server.StopIfNotReadyAsync(p => p.WaitForErrorLineAsync("Server listening", Long));
        using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{serverHttp}") };
        await using var probe = await MqttProbe.ConnectAsync(mqttPort);
        await probe.SubscribeAsync("th1/#", MqttQualityOfServiceLevel.AtLeastOnce);
        using var data = new TempDirectory("device");
        await using var device = NightlightCli.Start("device", "--broker", $"mqtt://127.0.0.1:{mqttPort}", "--id", "th1", "--type", "thermostat",
            "--temperature", "17", "--data", data.Path, "--interval", "300ms");

        // Cold: the server's rule heats, the thermostat acknowledges, and the API shows both sides agreeing.
        await device.WaitForLineAsync("Heating switched ON", Long);
        var heating = await PollAsync(http, "/api/devices/th1", d => d.TryGetProperty("state", out var s) && s.TryGetProperty("heating_on", out var h) &&
            Bool(h, "inSync") == true, server);
        Assert.True(Bool(Switch(heating, "heating_on"), "desired"));
        Assert.Equal("rule", Switch(heating, "heating_on").GetProperty("source").GetString());
        Assert.Contains(probe.Received, m => m.Topic == "th1/status" && m.Payload.Contains("\"switches\": [\"heating_on\"]", StringComparison.Ordinal));

        // Warm: off at or above 21.
        await device.TypeAsync("22");
        await device.WaitForLineAsync("Heating switched OFF", Long);
        var warm = await PollAsync(http, "/api/devices/th1", d => Bool(Switch(d, "heating_on"), "reported") == false, server);
        Assert.False(Bool(Switch(warm, "heating_on"), "desired"));
        Assert.True(Bool(Switch(warm, "heating_on"), "inSync"));
        var history = await http.GetFromJsonAsync<JsonElement>("/api/devices/th1/commands");
        Assert.Contains(history.EnumerateArray(), c => c.GetProperty("command").TryGetProperty("heating_on", out var v) && !v.GetBoolean() &&
            c.GetProperty("status").GetString() == "acknowledged");

        // By hand: the switch it declares is taken, the one it does not have is refused by the API...
        var refused = await http.PostAsync("/api/devices/th1/commands", new StringContent("{\"led_on\": true}", System.Text.Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.BadRequest, refused.StatusCode);
        Assert.Contains("heating_on", await refused.Content.ReadAsStringAsync());
        var manual = await PostAsync(http, "th1", "{\"heating_on\": true, \"overrideFor\": \"1m\"}");
        await device.WaitForCountAsync(l => l.Contains("Heating switched ON", StringComparison.Ordinal), 2, "heating on by hand", Long);
        await PollAsync(http, "/api/devices/th1/commands", c => StatusOf(c, manual) == "acknowledged", server);

        // ...and by the device, which says why in its acknowledgement rather than acknowledging what it ignored.
        await probe.PublishAsync("th1/commands", "{\"led_on\": false, \"id\": \"x-led\", \"seq\": 1, \"ordered\": true}", MqttQualityOfServiceLevel.AtLeastOnce);
        var ack = (await probe.WaitForAsync(m => m.Topic == "th1/acks" && m.Payload.Contains("x-led", StringComparison.Ordinal), timeout: Long))[0];
        Assert.Contains("\"status\": \"refused\"", ack.Payload);
        Assert.Contains("no switch led_on", ack.Payload);
        Assert.Equal(1, Count(device, "Heating switched OFF"));
    }

    /// <summary><c>nightlight up --type thermostat</c>: the one process's server heats the room its own thermostat measures.</summary>
    [Fact]
    public async Task Up_with_a_thermostat_heats_a_cold_room_end_to_end()
    {
        using var data = new TempDirectory("up");
        var http = Ports.Free();
        await using var up = NightlightCli.Start("up", "--mqtt-port", Ports.Free().ToString(), "--http-port", http.ToString(), "--data", data.Path,
            "--type", "thermostat", "--temperature", "15");
        await up.WaitForLineAsync("Heating switched ON", Long);
        using var api = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{http}") };
        var device = await PollAsync(api, "/api/devices/nightlight1", d => d.TryGetProperty("state", out var s) && s.TryGetProperty("heating_on", out var h) &&
            Bool(h, "inSync") == true, up);
        Assert.True(Bool(Switch(device, "heating_on"), "desired"));
        Assert.Contains(up.StdoutLines, l => l.Contains("{\"heating_on\": true}", StringComparison.Ordinal));
    }

    /// <summary>
    /// The dashboard's card says what the server wants and what the device confirmed: dark, the rule wants the LED on
    /// and the device says on; a manual "off" while the device's link is cut shows wanted off, not yet confirmed.
    /// </summary>
    [Trait("Speed", "Slow")]
    [Fact]
    public async Task The_dashboard_card_shows_desired_and_reported_state()
    {
        // Broker, server and dashboard in one process (the dashboard asks the server's device API); the device apart.
        using var upData = new TempDirectory("up");
        var mqttPort = Ports.Free();
        var serverHttp = Ports.Free();
        await using var server = NightlightCli.Start("up", "--no-device", "--mqtt-port", mqttPort.ToString(), "--http-port", serverHttp.ToString(),
            "--data", upData.Path, "--quiet");
        await server.StopIfNotReadyAsync(p => p.WaitForErrorLineAsync("Server listening", Long));
        await using var proxy = TcpProxy.Start(mqttPort);
        using var data = new TempDirectory("device");
        await using var device = NightlightCli.Start("device", "--broker", proxy.Url, "--id", "card1", "--data", data.Path, "--interval", "300ms", "--light", "100");
        await device.WaitForLineAsync("LED switched ON", Long);
        await using var browser = await Browser.LaunchAsync();
        var page = await browser.OpenAsync($"http://127.0.0.1:{serverHttp}/");
        var led = page.Locator("article.device[data-device='card1'] .switches li[data-switch='led_on']");
        await Expect(led).ToHaveAttributeAsync("data-sync", "true", new() { Timeout = 30_000 });
        await Expect(led).ToContainTextAsync("LED: wanted on (rule), device says on");

        proxy.Cut();
        using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{serverHttp}") };
        await PollAsync(http, "/api/devices/card1", d => Bool(d, "online") == false, server);
        await PostAsync(http, "card1", "{\"led_on\": false, \"overrideFor\": \"10m\"}");
        await Expect(led).ToHaveAttributeAsync("data-sync", "false", new() { Timeout = 30_000 });
        await Expect(led).ToContainTextAsync("wanted off (manual until");
        await Expect(led).ToContainTextAsync("device says on – not yet");
        await Browser.ScreenshotAsync(page, "dashboard-desired-reported");

        proxy.Restore();
        await Expect(led).ToHaveAttributeAsync("data-sync", "true", new() { Timeout = 60_000 });
        await Expect(led).ToContainTextAsync("device says off ✓");
    }

    /// <summary>
    /// Issue 31, bullet 5: <c>--fallback-after</c> counted only from the loss of the broker, so with the broker up and
    /// the server stopped the device never decided alone. The server now keeps a retained status with a last will on
    /// <c>nightlight/server/status</c>; the device counts from the moment it says offline. The device's own threshold
    /// (600) differs from the server's (300), so at light 500 the LED tells who decided. Stopped cleanly (INT) the
    /// server says offline itself; killed (KILL) its broker publishes its last will.
    /// </summary>
    [Theory]
    [InlineData("INT")]
    [InlineData("KILL")]
    public async Task A_stopped_server_makes_the_device_decide_alone_after_the_fallback_time(string signal)
    {
        var (broker, mqttPort, _) = await NightlightCli.StartBrokerAsync();
        await using var _broker = broker;
        await using var probe = await MqttProbe.ConnectAsync(mqttPort);
        await probe.SubscribeAsync(Topics.ServerStatus, MqttQualityOfServiceLevel.AtLeastOnce);
        await probe.SubscribeAsync(Topics.Status("fs1"), MqttQualityOfServiceLevel.AtLeastOnce);
        await using var server = NightlightCli.Start("server", "--broker", $"mqtt://127.0.0.1:{mqttPort}", "--quiet");
        await server.StopIfNotReadyAsync(p => p.WaitForErrorLineAsync("Server listening", Long));
        await probe.WaitForAsync(m => m.Topic == Topics.ServerStatus && m.Payload == "{\"online\": true}", timeout: Long);
        using var data = new TempDirectory("device");
        await using var device = NightlightCli.Start("device", "--broker", $"mqtt://127.0.0.1:{mqttPort}", "--id", "fs1", "--data", data.Path,
            "--interval", "200ms", "--light", "500", "--threshold", "600", "--fallback-after", "2s");
        await device.WaitForLineAsync("LED switched OFF", Long);
        await probe.WaitForAsync(m => m.Topic == "fs1/status" && m.Payload.Contains("\"mode\": \"cloud\"", StringComparison.Ordinal), timeout: Long);
        // Connected to a live server for longer than the fallback time, the device still follows it.
        await Task.Delay(2500);
        Assert.Equal(0, Count(device, "deciding locally"));

        server.Signal(signal);
        Assert.True(await server.WaitForExitAsync(Long), server.Describe());
        await probe.WaitForAsync(m => m.Topic == Topics.ServerStatus && m.Payload == "{\"online\": false}", timeout: Long);
        var gone = DateTime.UtcNow;
        await device.WaitForLineAsync("No word from the server: deciding locally (LED on below 600)", Long);
        var after = DateTime.UtcNow - gone;
        output.WriteLine($"SIG{signal}: deciding locally {after.TotalMilliseconds:0} ms after the server's status said offline (--fallback-after 2s)");
        await device.WaitForLineAsync("LED switched ON", Long);
        Assert.Contains(device.StderrLines, l => l.Contains("the server has been gone for 2s; deciding locally", StringComparison.Ordinal));
        // 2 s, give or take the device's check interval, the probe hearing the status after the device, and a loaded machine.
        Assert.True(after > TimeSpan.FromSeconds(1) && after < TimeSpan.FromSeconds(6), $"the device decided alone {after.TotalSeconds:0.0} s after the server went");
        await probe.WaitForAsync(m => m.Topic == "fs1/status" && m.Payload.Contains("\"mode\": \"local\"", StringComparison.Ordinal), timeout: Long);
        Assert.True(device.HasExited is false);
    }

    /// <summary>
    /// The server's presence is for every device to read, on a broker with identities too, and only a server may
    /// write it: a device that could would keep every other device from ever deciding alone, or make them all do so.
    /// </summary>
    [Fact]
    public async Task Devices_with_identities_read_the_server_status_and_cannot_write_it()
    {
        using var data = new DataDir();
        var deviceSecret = data.Add("porch");
        var serverSecret = data.Add("backend", "add-server");
        var (broker, port, _) = await NightlightCli.StartBrokerAsync("--data", data.Path);
        await using var _broker = broker;
        await using var server = NightlightCli.Start("server", "--broker", $"mqtt://127.0.0.1:{port}", "--username", "backend", "--password", serverSecret, "--quiet");
        await server.StopIfNotReadyAsync(p => p.WaitForErrorLineAsync("Server listening", Long));
        await using var porch = await MqttProbe.ConnectAsAsync(port, "porchnightlight_client", "porch", deviceSecret, MqttProtocolVersion.V500);
        await porch.SubscribeAsync(Topics.ServerStatus, MqttQualityOfServiceLevel.AtLeastOnce);
        Assert.Equal("{\"online\": true}", (await porch.WaitForAsync(m => m.Topic == Topics.ServerStatus, timeout: Long))[0].Payload);
        // Heard live, the status may come without the retain flag (the server can announce itself after the subscribe);
        // a device that subscribes later must find it kept.
        await using (var late = await MqttProbe.ConnectAsAsync(port, "porch#late", "porch", deviceSecret, MqttProtocolVersion.V500))
        {
            await late.SubscribeAsync(Topics.ServerStatus, MqttQualityOfServiceLevel.AtLeastOnce);
            var kept = (await late.WaitForAsync(m => m.Topic == Topics.ServerStatus, timeout: Long))[0];
            Assert.Equal("{\"online\": true}", kept.Payload);
            Assert.True(kept.Retained);
        }

        var forged = await porch.Client.PublishAsync(new MqttApplicationMessageBuilder().WithTopic(Topics.ServerStatus).WithPayload("{\"online\": false}")
            .WithRetainFlag().WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build());
        Assert.Equal(MqttClientPublishReasonCode.NotAuthorized, forged.ReasonCode);

        server.Signal("INT");
        Assert.True(await server.WaitForExitAsync(Long), server.Describe());
        await porch.WaitForAsync(m => m.Topic == Topics.ServerStatus && m.Payload == "{\"online\": false}", timeout: Long);
    }

    /// <summary>
    /// Issue 31, bullet 4: the stadium's floodlights send no telemetry, so the server had no record of them and
    /// <c>GET /api/devices/flood1/commands</c> answered 404 although it had sent them commands.
    /// </summary>
    [Fact]
    public async Task Floodlights_driven_by_a_group_rule_have_state_and_command_history()
    {
        var (broker, mqttPort, _) = await NightlightCli.StartBrokerAsync();
        await using var _broker = broker;
        var serverHttp = Ports.Free();
        await using var server = NightlightCli.StartWith(new Dictionary<string, string>
            {
                ["NIGHTLIGHT_Rules__Groups__0__Name"] = "stadium",
                ["NIGHTLIGHT_Rules__Groups__0__Sensors__0"] = "stand-north",
                ["NIGHTLIGHT_Rules__Groups__0__Sensors__1"] = "stand-south",
                ["NIGHTLIGHT_Rules__Groups__0__Lights__0"] = "flood1",
                ["NIGHTLIGHT_Rules__Groups__0__Lights__1"] = "flood2",
            },
            "server", "--broker", $"mqtt://127.0.0.1:{mqttPort}", "--http-port", serverHttp.ToString(), "--quiet");
        await server.StopIfNotReadyAsync(p => p.WaitForErrorLineAsync("Server listening", Long));
        using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{serverHttp}") };
        await using var stands = await MqttProbe.ConnectAsync(mqttPort);
        await stands.SubscribeAsync("+/commands", MqttQualityOfServiceLevel.AtLeastOnce);

        await stands.PublishAsync("stand-north/telemetry", "{\"light\": 100}");
        await stands.PublishAsync("stand-south/telemetry", "{\"light\": 120}");
        await stands.WaitForAsync(m => m.Topic == "flood2/commands", timeout: Long);

        foreach (var light in new[] { "flood1", "flood2" })
        {
            var commands = await PollAsync(http, $"/api/devices/{light}/commands", c => c.GetArrayLength() > 0, server);
            var first = commands.EnumerateArray().First();
            Assert.True(first.GetProperty("command").GetProperty("led_on").GetBoolean());
            Assert.Equal("rule", first.GetProperty("source").GetString());
            var device = await PollAsync(http, $"/api/devices/{light}", _ => true, server);
            Assert.True(Bool(Switch(device, "led_on"), "desired"));
            Assert.Equal("rule", Switch(device, "led_on").GetProperty("source").GetString());
        }
        var all = await http.GetFromJsonAsync<JsonElement>("/api/devices");
        Assert.Contains(all.EnumerateArray(), d => d.GetProperty("id").GetString() == "flood1");

        // Daylight: the group switches them off, and each light's history has both commands, newest first.
        await stands.PublishAsync("stand-north/telemetry", "{\"light\": 800}");
        await stands.PublishAsync("stand-south/telemetry", "{\"light\": 900}");
        var off = await PollAsync(http, "/api/devices/flood1/commands", c => c.GetArrayLength() >= 2, server);
        Assert.False(off.EnumerateArray().First().GetProperty("command").GetProperty("led_on").GetBoolean());
        Assert.False(Bool(Switch(await PollAsync(http, "/api/devices/flood2", _ => true, server), "led_on"), "desired"));
    }
}
