using Microsoft.Playwright;
using Nightlight.Tests.Support;
using static Microsoft.Playwright.Assertions;

namespace Nightlight.Tests;

/// <summary>
/// The dashboard's parts beside the device chart, in real headless Chromium against <c>nightlight up</c>: the manual
/// override notice on the card, the live MQTT message view and the pages in Simplified Chinese.
/// </summary>
[Trait("Speed", "Slow")]
public class DashboardPanelsTests
{
    // Long waits for a busy 2-core machine; a learner sees each of these within a second or two.
    static readonly LocatorAssertionsToBeVisibleOptions Visible = new() { Timeout = 20_000 };
    static readonly LocatorAssertionsToHaveAttributeOptions Attribute = new() { Timeout = 20_000 };
    static readonly LocatorAssertionsToContainTextOptions Text = new() { Timeout = 20_000 };

    static async Task<(ProcessRunner Up, string Url, int MqttPort)> StartUpAsync(params string[] extra)
    {
        var http = Ports.Free();
        var mqtt = Ports.Free();
        var up = NightlightCli.Start(["up", "--mqtt-port", mqtt.ToString(), "--http-port", http.ToString(), "--interval", "300ms", .. extra]);
        await up.WaitForLineAsync("Message received: {\"light\":", TimeSpan.FromSeconds(60));
        return (up, $"http://127.0.0.1:{http}", mqtt);
    }

    [Fact]
    public async Task LED_off_for_10_min_shows_the_override_until_when_and_ends_it_with_a_click()
    {
        var (up, url, _) = await StartUpAsync("--light", "100", "--id", "held");
        await using var _ = up;
        await using var browser = await Browser.LaunchAsync();
        var dashboard = await browser.OpenAsync(url + "/");
        var card = dashboard.Locator("article.device[data-device='held']");
        await Expect(card.Locator(".led")).ToHaveAttributeAsync("data-on", "true", Attribute);
        var notice = card.Locator(".override");
        await Expect(notice).ToBeHiddenAsync(new() { Timeout = 20_000 });

        // Regression: the click silently stopped the server's answers, and nothing said so or for how long.
        await card.Locator(".send-off").ClickAsync();
        await Expect(notice).ToBeVisibleAsync(Visible);
        await Expect(notice).ToContainTextAsync("Override: LED off until", Text);
        await Expect(card.Locator(".led")).ToHaveAttributeAsync("data-on", "false", Attribute);
        var until = DateTimeOffset.Parse((await notice.GetAttributeAsync("data-until"))!, System.Globalization.CultureInfo.InvariantCulture);
        Assert.InRange(until - DateTimeOffset.UtcNow, TimeSpan.FromMinutes(9), TimeSpan.FromMinutes(10.1));
        // The time as the browser writes it, in the page's own locale.
        var localTime = await dashboard.EvaluateAsync<string>("iso => new Date(iso).toLocaleTimeString()", until.ToString("O"));
        await Expect(notice).ToContainTextAsync(localTime, Text);
        Assert.StartsWith("server → held ", await up.WaitForLineAsync("| Override: LED off until"));

        // A page opened later shows the same override.
        var later = await browser.OpenAsync(url + "/");
        await Expect(later.Locator("article.device[data-device='held'] .override")).ToContainTextAsync("Override: LED off until", Text);
        await Browser.ScreenshotAsync(dashboard, "dashboard-override");

        await notice.Locator(".end-override").ClickAsync();
        await Expect(notice).ToBeHiddenAsync(new() { Timeout = 20_000 });
        Assert.StartsWith("server → held ", await up.WaitForLineAsync("| Override ended; the rule decides again"));
        // The rule decides again: dark, so the LED goes back on, in the other page too.
        await Expect(card.Locator(".led")).ToHaveAttributeAsync("data-on", "true", Attribute);
        await Expect(later.Locator("article.device[data-device='held'] .override")).ToBeHiddenAsync(new() { Timeout = 20_000 });
    }

    [Fact]
    public async Task The_message_view_shows_each_message_with_its_topic_qos_retain_and_direction_and_filters_and_pauses()
    {
        var (up, url, mqtt) = await StartUpAsync("--light", "100", "--id", "watched");
        await using var _ = up;
        await using var browser = await Browser.LaunchAsync();
        var dashboard = await browser.OpenAsync(url + "/");
        var rows = dashboard.Locator("#message-rows tr");

        // The lesson's two messages, as mosquitto_sub -v would show them, and which way each went.
        var telemetry = dashboard.Locator("#message-rows tr[data-topic='watched/telemetry'][data-direction='up']").First;
        await Expect(telemetry).ToBeVisibleAsync(Visible);
        await Expect(telemetry.Locator(".payload")).ToContainTextAsync("{\"light\": 100", Text);
        await Expect(telemetry.Locator(".direction")).ToHaveTextAsync("device → server");
        await Expect(telemetry.Locator(".qos")).ToHaveTextAsync("0");
        await Expect(telemetry.Locator(".retain")).ToHaveTextAsync("no");
        var command = dashboard.Locator("#message-rows tr[data-topic='watched/commands'][data-direction='down']").First;
        await Expect(command).ToBeVisibleAsync(Visible);
        await Expect(command.Locator(".payload")).ToContainTextAsync("\"led_on\": true", Text);
        await Expect(command.Locator(".direction")).ToHaveTextAsync("server → device");

        // A learner's own client publishes with QoS 1 and the retain flag.
        await using (var own = await MqttProbe.ConnectAsync(mqtt, clientId: "learner_client"))
        {
            await own.PublishAsync("learner/notes", "hello", MQTTnet.Protocol.MqttQualityOfServiceLevel.AtLeastOnce, retain: true);
        }
        var mine = dashboard.Locator("#message-rows tr[data-topic='learner/notes']");
        await Expect(mine).ToHaveCountAsync(1, new() { Timeout = 20_000 });
        await Expect(mine.Locator(".qos")).ToHaveTextAsync("1");
        await Expect(mine.Locator(".retain")).ToHaveTextAsync("yes");
        await Expect(mine.Locator(".payload")).ToHaveTextAsync("hello");
        await Expect(mine.Locator(".direction")).ToHaveTextAsync("from learner_client");
        // The time in the browser's own format, to the millisecond.
        await Expect(mine.Locator(".time")).ToHaveTextAsync(new System.Text.RegularExpressions.Regex(@"\d{1,2}:\d\d:\d\d[.,]\d{3}"));

        // Filter by topic, with an MQTT wildcard: only commands stay.
        await dashboard.Locator("#message-topic").FillAsync("+/commands");
        await Expect(rows.First).ToHaveAttributeAsync("data-topic", "watched/commands", Attribute);
        Assert.All(await rows.EvaluateAllAsync<string[]>("rs => rs.map(r => r.dataset.topic)"), t => Assert.EndsWith("/commands", t));
        await dashboard.Locator("#message-topic").FillAsync("");
        // Filter by device: the learner's topic is no device's.
        await dashboard.Locator("#message-device").SelectOptionAsync("watched");
        await Expect(mine).ToHaveCountAsync(0, new() { Timeout = 20_000 });
        Assert.All(await rows.EvaluateAllAsync<string[]>("rs => rs.map(r => r.dataset.topic)"), t => Assert.StartsWith("watched/", t));

        // Pause: the rows stand still while messages go on arriving, and the count says how many came.
        await dashboard.Locator("#message-pause").ClickAsync();
        var frozen = await rows.EvaluateAllAsync<string[]>("rs => rs.map(r => r.querySelector('.time').textContent + r.dataset.topic)");
        await Expect(dashboard.Locator("#message-count")).ToContainTextAsync(new System.Text.RegularExpressions.Regex("paused, [1-9]\\d* new"), Text);
        await Task.Delay(1000);
        Assert.Equal(frozen, await rows.EvaluateAllAsync<string[]>("rs => rs.map(r => r.querySelector('.time').textContent + r.dataset.topic)"));
        await Browser.ScreenshotAsync(dashboard, "dashboard-messages");
        await dashboard.Locator("#message-pause").ClickAsync();
        await dashboard.WaitForFunctionAsync("f => document.querySelector('#message-rows tr .time').textContent + document.querySelector('#message-rows tr').dataset.topic !== f",
            frozen[0], new PageWaitForFunctionOptions { Timeout = 20_000 });
    }

    [Fact]
    public async Task A_chinese_browser_gets_both_pages_in_chinese_with_its_own_time_format_and_can_switch_to_english()
    {
        var (up, url, _) = await StartUpAsync("--light", "100", "--id", "zhlight");
        await using var _ = up;
        await using var browser = await Browser.LaunchAsync();
        var context = await browser.Chromium.NewContextAsync(new BrowserNewContextOptions
        {
            Locale = "zh-CN",
            ViewportSize = new ViewportSize { Width = 1200, Height = 900 },
        });
        var dashboard = await context.NewPageAsync();
        await dashboard.GotoAsync(url + "/");

        Assert.Equal("zh-CN", await dashboard.EvaluateAsync<string>("document.documentElement.lang"));
        await Expect(dashboard.Locator("nav a[href='/']")).ToHaveTextAsync("仪表板");
        var card = dashboard.Locator("article.device[data-device='zhlight']");
        await Expect(card.Locator(".online")).ToHaveTextAsync("在线", new() { Timeout = 20_000 });
        await Expect(card.Locator(".led")).ToHaveTextAsync("开", new() { Timeout = 20_000 });
        await Expect(card.Locator(".send-on")).ToHaveTextAsync("打开 LED 10 分钟");
        await Expect(dashboard.Locator("#messages summary h2")).ToHaveTextAsync("MQTT 消息");
        await Expect(dashboard.Locator("#message-rows tr[data-topic='zhlight/commands'] .direction").First).ToHaveTextAsync("服务器 → 设备", new() { Timeout = 20_000 });
        // Payloads are what the device sent, never translated.
        await Expect(dashboard.Locator("#message-rows tr[data-topic='zhlight/commands'] .payload").First).ToHaveTextAsync("{\"led_on\": true}");
        // Times as a Chinese browser writes them (24-hour, no AM/PM), e.g. "最近读数 15:02:45".
        await Expect(card.Locator(".last-seen")).ToHaveTextAsync(new System.Text.RegularExpressions.Regex(@"^最近读数 \d{1,2}:\d\d:\d\d$"), new() { Timeout = 20_000 });
        await Browser.ScreenshotAsync(dashboard, "dashboard-zh-CN");

        var hardware = await context.NewPageAsync();
        await hardware.GotoAsync(url + "/hardware");
        await Expect(hardware.Locator("main h2").First).ToHaveTextAsync("传感器");
        await Expect(hardware.Locator(".sensor[data-port='0'] .mode option[value='DayNight']")).ToHaveTextAsync("昼夜曲线", new() { Timeout = 20_000 });
        await Expect(hardware.Locator(".actuator[data-port='5'] .state")).ToHaveTextAsync("开", new() { Timeout = 20_000 });
        await Browser.ScreenshotAsync(hardware, "hardware-zh-CN");

        // The learner switches to English; the choice stays for the next page.
        await dashboard.Locator("#language").SelectOptionAsync("en");
        await Expect(dashboard.Locator("nav a[href='/']")).ToHaveTextAsync("Dashboard", new() { Timeout = 20_000 });
        await Expect(dashboard.Locator("article.device[data-device='zhlight'] .online")).ToHaveTextAsync("online", new() { Timeout = 20_000 });
        await hardware.ReloadAsync();
        await Expect(hardware.Locator("main h2").First).ToHaveTextAsync("Sensors");
        Assert.Equal("en", await hardware.EvaluateAsync<string>("document.documentElement.lang"));
    }
}
