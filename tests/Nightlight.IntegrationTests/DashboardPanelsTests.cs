using Microsoft.Playwright;
using Nightlight.Tests.Support;
using static Microsoft.Playwright.Assertions;

namespace Nightlight.Tests;

/// <summary>
/// The dashboard's parts beside the device chart, in real headless Chromium against <c>nightlight up</c>: the manual
/// override notice on the card and the live MQTT message view.
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
}
