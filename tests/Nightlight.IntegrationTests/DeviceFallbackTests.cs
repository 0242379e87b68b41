using System.Net.Http.Json;
using System.Text.Json;
using Microsoft.Playwright;
using MQTTnet.Protocol;
using Nightlight.Protocol;
using Nightlight.Tests.Support;
using static Microsoft.Playwright.Assertions;

namespace Nightlight.Tests;

/// <summary>
/// A device that decides alone (issue 10, part 1): cut its link with a TCP proxy, it applies its own rule after
/// <c>--fallback-after</c>; the server's commands take over again when they arrive; both switches show in the
/// retained presence, the server's device API and the dashboard. The device's local threshold (600) differs from the
/// server's (300), so at light 500 the LED tells who decided: on is the device's rule, off the server's.
/// </summary>
public class DeviceFallbackTests
{
    static readonly TimeSpan Long = TimeSpan.FromSeconds(30);
    const string CloudPresence = "{\"online\": true, \"mode\": \"cloud\"}";
    const string LocalPresence = "{\"online\": true, \"mode\": \"local\"}";

    static int Count(ProcessRunner process, string text) => process.StdoutLines.Count(l => l.Contains(text, StringComparison.Ordinal));

    static int CountLog(ProcessRunner process, string text) => process.StderrLines.Count(l => l.Contains(text, StringComparison.Ordinal));

    /// <summary>Waits for one more stdout line with <paramref name="text"/> than <paramref name="before"/>: lines from an earlier switch do not count.</summary>
    static Task WaitForNextAsync(ProcessRunner process, string text, int before) =>
        process.WaitForCountAsync(l => l.Contains(text, StringComparison.Ordinal), before + 1, $"'{text}' #{before + 1}", Long);

    static async Task WaitForNextLogAsync(ProcessRunner process, string text, int before)
    {
        var deadline = DateTime.UtcNow + Long;
        while (CountLog(process, text) <= before)
        {
            Assert.True(DateTime.UtcNow < deadline, $"waited for log line '{text}' #{before + 1}\n{process.Describe()}");
            await Task.Delay(50);
        }
    }

    static int IndexOf(MqttProbe probe, string topic, string payload, int after = -1) =>
        probe.Received.Select((m, i) => (m, i)).FirstOrDefault(x => x.i > after && x.m.Topic == topic && x.m.Payload == payload, (default, -1)).Item2;

    static async Task<int> WaitForPresenceAsync(MqttProbe probe, string id, string payload, int after, ProcessRunner device)
    {
        var deadline = DateTime.UtcNow + Long;
        int index;
        while ((index = IndexOf(probe, Topics.Status(id), payload, after)) < 0)
        {
            Assert.True(DateTime.UtcNow < deadline, $"waited for presence {payload}\n{device.Describe()}");
            await Task.Delay(50);
        }
        return index;
    }

    static string? LastPresence(MqttProbe probe, string id) => probe.Received.LastOrDefault(m => m.Topic == Topics.Status(id)).Payload;

    static async Task<string?> ModeFromApiAsync(HttpClient http, string url)
    {
        var response = await http.GetAsync(url);
        if (!response.IsSuccessStatusCode)
        {
            return null;
        }
        var device = await response.Content.ReadFromJsonAsync<JsonElement>();
        return device.TryGetProperty("mode", out var mode) && mode.ValueKind == JsonValueKind.String ? mode.GetString() : null;
    }

    static async Task WaitForModeAsync(HttpClient http, string url, string expected, ProcessRunner server)
    {
        var deadline = DateTime.UtcNow + Long;
        string? seen = null;
        while (DateTime.UtcNow < deadline)
        {
            if ((seen = await ModeFromApiAsync(http, url)) == expected)
            {
                return;
            }
            await Task.Delay(100);
        }
        Assert.Fail($"the device API said mode '{seen}', expected '{expected}'\n{server.Describe()}");
    }

    [Trait("Speed", "Slow")]
    [Fact]
    public async Task A_cut_link_makes_the_device_decide_alone_and_the_servers_commands_take_over_again()
    {
        var (broker, mqttPort, _) = await NightlightCli.StartBrokerAsync();
        await using var _broker = broker;
        await using var proxy = TcpProxy.Start(mqttPort);
        await using var probe = await MqttProbe.ConnectAsync(mqttPort);
        await probe.SubscribeAsync(Topics.Status("fb1"), MqttQualityOfServiceLevel.AtLeastOnce);
        var serverHttp = Ports.Free();
        // Answer only changes: after the outage the server stays quiet until its decision changes, so the device
        // stays local (and says so) until a real command comes.
        await using var server = NightlightCli.StartWith(new Dictionary<string, string> { ["NIGHTLIGHT_Rules__Default__Answer"] = "changes" },
            "server", "--broker", $"mqtt://127.0.0.1:{mqttPort}", "--http-port", serverHttp.ToString(), "--quiet");
        using var data = new TempDirectory("device");
        await using var device = NightlightCli.Start("device", "--broker", proxy.Url, "--id", "fb1", "--data", data.Path, "--interval", "200ms",
            "--light", "500", "--threshold", "600", "--fallback-after", "2s");
        using var http = new HttpClient();
        var api = $"http://127.0.0.1:{serverHttp}/api/devices/fb1";

        // Online, the server decides: LED off at 500. (On a slow start the device may have decided alone before its
        // first connection; the server's first command took over then.)
        await device.WaitForLineAsync("LED switched OFF", Long);
        await WaitForPresenceAsync(probe, "fb1", CloudPresence, -1, device);
        await WaitForModeAsync(http, api, "cloud", server);
        Assert.Equal(CloudPresence, LastPresence(probe, "fb1"));
        var onBefore = Count(device, "LED switched ON");
        var offBefore = Count(device, "LED switched OFF");
        var localBefore = Count(device, "No word from the server: deciding locally (LED on below 600)");
        var localLogBefore = CountLog(device, "no connection to the broker for 2s; deciding locally");
        var cloudBefore = Count(device, "The server decides again");
        var cloudLogBefore = CountLog(device, "the server's commands are back");

        // The link is cut: after 2 s the device decides alone, LED on below its own 600.
        var mark = probe.Received.Count - 1;
        proxy.Cut();
        await WaitForNextAsync(device, "No word from the server: deciding locally (LED on below 600)", localBefore);
        await WaitForNextAsync(device, "LED switched ON", onBefore);
        await WaitForNextLogAsync(device, "no connection to the broker for 2s; deciding locally", localLogBefore);

        // Back online it says it decides locally, in its retained presence and so in the server's device API.
        proxy.Restore();
        var local = await WaitForPresenceAsync(probe, "fb1", LocalPresence, mark, device);
        await WaitForModeAsync(http, api, "local", server);
        Assert.Equal(onBefore + 1, Count(device, "LED switched ON"));

        // The server's decision changes (dark), its command arrives and takes over; then at 500 it says off, which
        // the device's own rule would not.
        await device.TypeAsync("100");
        await WaitForNextAsync(device, "The server decides again", cloudBefore);
        await WaitForNextLogAsync(device, "the server's commands are back", cloudLogBefore);
        await device.TypeAsync("500");
        await WaitForNextAsync(device, "LED switched OFF", offBefore);
        await WaitForPresenceAsync(probe, "fb1", CloudPresence, local, device);
        await WaitForModeAsync(http, api, "cloud", server);
        await Task.Delay(1000);
        Assert.Equal(onBefore + 1, Count(device, "LED switched ON"));
        Assert.Equal(CloudPresence, LastPresence(probe, "fb1"));
    }

    [Trait("Speed", "Slow")]
    [Fact]
    public async Task The_dashboard_shows_when_a_device_decides_alone()
    {
        var (broker, mqttPort, httpPort) = await NightlightCli.StartBrokerAsync();
        await using var _broker = broker;
        await using var proxy = TcpProxy.Start(mqttPort);
        await using var probe = await MqttProbe.ConnectAsync(mqttPort);
        using var data = new TempDirectory("device");
        await using var device = NightlightCli.Start("device", "--broker", proxy.Url, "--id", "fb2", "--data", data.Path, "--interval", "200ms",
            "--light", "500", "--threshold", "600", "--fallback-after", "1s");
        await using var browser = await Browser.LaunchAsync();
        var dashboard = await browser.OpenAsync($"http://127.0.0.1:{httpPort}/");
        var mode = dashboard.Locator("article.device[data-device='fb2'] .mode");
        // No server runs here: a command published by hand plays its part (and makes the device follow the server,
        // should a slow start have kept it offline for longer than a second).
        await probe.SubscribeAsync(Topics.Telemetry("fb2"));
        await probe.WaitForAsync(m => m.Topic == "fb2/telemetry", timeout: Long);
        await probe.PublishAsync(Topics.Commands("fb2"), "{\"led_on\": false}", MqttQualityOfServiceLevel.AtLeastOnce);
        await Expect(mode).ToHaveTextAsync("server decides", new() { Timeout = 30_000 });
        await Expect(mode).ToHaveAttributeAsync("data-mode", "cloud");
        var localBefore = Count(device, "deciding locally");
        var onBefore = Count(device, "LED switched ON");
        var offBefore = Count(device, "LED switched OFF");

        proxy.Cut();
        await WaitForNextAsync(device, "deciding locally", localBefore);
        proxy.Restore();
        // Once back, with nobody sending commands, the device keeps deciding alone and says so.
        await Expect(mode).ToHaveTextAsync("deciding locally", new() { Timeout = 30_000 });
        await Expect(mode).ToHaveAttributeAsync("data-mode", "local");
        await Browser.ScreenshotAsync(dashboard, "dashboard-local-mode");

        await WaitForNextAsync(device, "LED switched ON", onBefore);

        // A command from the server's side takes over.
        await probe.PublishAsync(Topics.Commands("fb2"), "{\"led_on\": false}", MqttQualityOfServiceLevel.AtLeastOnce);
        await Expect(mode).ToHaveTextAsync("server decides", new() { Timeout = 30_000 });
        await WaitForNextAsync(device, "LED switched OFF", offBefore);
    }
}
