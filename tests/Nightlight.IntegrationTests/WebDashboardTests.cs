using Microsoft.Playwright;
using Nightlight.Tests.Support;
using static Microsoft.Playwright.Assertions;

namespace Nightlight.Tests;

/// <summary>The dashboard and the virtual hardware page of <c>nightlight up</c>, in real headless Chromium.</summary>
[Trait("Speed", "Slow")]
public class WebDashboardTests
{
    // The user expects the LED within 2 seconds; the wait is longer so a busy CI machine does not fail the test.
    static readonly LocatorAssertionsToBeVisibleOptions Visible = new() { Timeout = 20_000 };
    static readonly LocatorAssertionsToHaveAttributeOptions Attribute = new() { Timeout = 20_000 };

    static async Task<(ProcessRunner Up, string Url)> StartUpAsync(params string[] extra)
    {
        var http = Ports.Free();
        var up = NightlightCli.Start(["up", "--mqtt-port", Ports.Free().ToString(), "--http-port", http.ToString(), "--interval", "200ms", .. extra]);
        // Starting a whole process can take long on a busy 2-core machine running the suite in parallel.
        await up.WaitForLineAsync("Message received: {\"light\":", TimeSpan.FromSeconds(60));
        return (up, $"http://127.0.0.1:{http}");
    }

    [Fact]
    public async Task Moving_the_light_slider_below_the_threshold_turns_the_led_on_in_both_pages()
    {
        var (up, url) = await StartUpAsync("--light", "700");
        await using var _ = up;
        await using var browser = await Browser.LaunchAsync();
        var dashboard = await browser.OpenAsync(url + "/");
        var hardware = await browser.OpenAsync(url + "/hardware");

        var card = dashboard.Locator("article.device[data-device='nightlight1']");
        await Expect(card).ToBeVisibleAsync(Visible);
        await Expect(card.Locator(".online")).ToHaveTextAsync("online", new() { Timeout = 20_000 });
        await Expect(card.Locator(".light")).ToHaveTextAsync("700", new() { Timeout = 20_000 });
        await Expect(card.Locator(".led")).ToHaveAttributeAsync("data-on", "false", Attribute);
        var lamp = hardware.Locator(".actuator[data-port='5'] .lamp");
        await Expect(lamp).ToHaveAttributeAsync("data-on", "false", Attribute);
        // The command log and manual command appear only when the server has the command API.
        using (var http = new HttpClient())
        {
            var commandApi = (await http.GetAsync(url + "/api/devices/nightlight1/commands")).StatusCode != System.Net.HttpStatusCode.NotFound;
            var manual = card.Locator(".manual");
            await (commandApi ? Expect(manual).ToBeVisibleAsync(Visible) : Expect(manual).ToBeHiddenAsync(new() { Timeout = 20_000 }));
        }
        await Browser.ScreenshotAsync(dashboard, "dashboard-light");
        await Browser.ScreenshotAsync(hardware, "hardware-light");

        // The learner drags the light sensor's slider down to dark (Home moves a range input to its minimum).
        var slider = hardware.Locator(".sensor[data-port='0'] input[type=range]");
        await slider.FocusAsync();
        await slider.PressAsync("Home");
        await Expect(hardware.Locator(".sensor[data-port='0'] .current")).ToHaveTextAsync("0", new() { Timeout = 20_000 });

        await Expect(lamp).ToHaveAttributeAsync("data-on", "true", Attribute);
        await Expect(card.Locator(".led")).ToHaveAttributeAsync("data-on", "true", Attribute);
        await Expect(card.Locator(".led")).ToHaveTextAsync("ON");
        await Expect(card.Locator(".light")).ToHaveTextAsync("0", new() { Timeout = 20_000 });
        await up.WaitForLineAsync("LED switched ON");
        await Browser.ScreenshotAsync(dashboard, "dashboard-dark");
        await Browser.ScreenshotAsync(hardware, "hardware-dark");
    }

    [Fact]
    public async Task The_light_slider_is_there_on_the_day_night_curve_and_takes_over_when_dragged()
    {
        // Regression: the lesson says "drag the light slider below 300", but on the curve (up's default) there was none.
        var (up, url) = await StartUpAsync("--day-length", "1h");
        await using var _ = up;
        await using var browser = await Browser.LaunchAsync();
        var hardware = await browser.OpenAsync(url + "/hardware");

        var sensor = hardware.Locator(".sensor[data-port='0']");
        await Expect(sensor.Locator(".mode")).ToHaveValueAsync("DayNight", new() { Timeout = 20_000 });
        var slider = sensor.Locator("input[type=range]");
        await Expect(slider).ToBeVisibleAsync(Visible);
        var lamp = hardware.Locator(".actuator[data-port='5'] .lamp");

        await slider.FocusAsync();
        await slider.PressAsync("End");
        await Expect(sensor.Locator(".mode")).ToHaveValueAsync("Fixed", new() { Timeout = 20_000 });
        await Expect(sensor.Locator(".current")).ToHaveTextAsync("1023", new() { Timeout = 20_000 });
        await Expect(lamp).ToHaveAttributeAsync("data-on", "false", Attribute);
        await slider.PressAsync("Home");
        await Expect(sensor.Locator(".current")).ToHaveTextAsync("0", new() { Timeout = 20_000 });
        await Expect(lamp).ToHaveAttributeAsync("data-on", "true", Attribute);
        await up.WaitForLineAsync("LED switched ON");
        // The page's icon is served (it was a 404 in every browser tab).
        Assert.Equal(200, await hardware.EvaluateAsync<int>("fetch(document.querySelector('link[rel=icon]').href).then(r => r.status)"));
    }

    [Fact]
    public async Task The_chart_draws_the_led_from_the_stored_commands_for_what_came_before_the_page()
    {
        // A known history: dark (LED on) for a few seconds, then light (LED off); only then is the page opened.
        var (up, url) = await StartUpAsync("--light", "100", "--id", "ledpast");
        await using var _ = up;
        await up.WaitForLineAsync("LED switched ON");
        await Task.Delay(TimeSpan.FromSeconds(3));
        await up.TypeAsync("700");
        await up.WaitForLineAsync("LED switched OFF");
        await Task.Delay(TimeSpan.FromSeconds(2));

        await using var browser = await Browser.LaunchAsync();
        var dashboard = await browser.OpenAsync(url + "/");
        var card = dashboard.Locator("article.device[data-device='ledpast']");
        await Expect(card.Locator(".led")).ToHaveAttributeAsync("data-on", "false", Attribute);
        await Expect(card.Locator(".log tbody tr")).Not.ToHaveCountAsync(0, new() { Timeout = 20_000 });
        // Regression: the first update invented one command at the device's first-seen time with today's state
        // (off), so the dark readings before the page opened were drawn with the LED off.
        // Counts of [dark readings drawn with the LED on, dark ones with it off, light ones with it on].
        const string ledSeries = """
            (() => { const d = state.devices.get('ledpast'); const light = d.chart.data[1], led = d.chart.data[3];
              return [light.filter((v, i) => v === 100 && led[i] === 1).length,
                      light.filter((v, i) => v === 100 && led[i] === 0).length,
                      light.filter((v, i) => v === 700 && led[i] === 1).length]; })()
            """;
        var series = new int[3];
        for (var tries = 0; tries < 40 && series[0] <= 5; tries++)
        {
            await Task.Delay(250);
            series = await dashboard.EvaluateAsync<int[]>(ledSeries);
        }
        Assert.True(series[0] > 5, $"dark readings drawn with the LED on: {series[0]}, off: {series[1]}");
        // Up to a second of readings before a change is drawn with the new state (ledAt's allowance for the answer's delay).
        Assert.True(series[1] <= 6 && series[1] < series[0], $"dark readings drawn with the LED off: {series[1]}, on: {series[0]}");
        Assert.True(series[2] <= 2, $"light readings drawn with the LED on: {series[2]}");
        await Browser.ScreenshotAsync(dashboard, "dashboard-led-history");
    }

    [Fact]
    public async Task The_chart_grows_as_readings_arrive()
    {
        var (up, url) = await StartUpAsync("--light", "250", "--id", "chartdemo");
        await using var _ = up;
        await using var browser = await Browser.LaunchAsync();
        var dashboard = await browser.OpenAsync(url + "/");

        var chart = dashboard.Locator("article.device[data-device='chartdemo'] .chart");
        await Expect(chart.Locator("canvas")).ToBeVisibleAsync(Visible);
        await Expect(chart).ToHaveAttributeAsync("data-points", new System.Text.RegularExpressions.Regex("^[1-9]"), Attribute);
        var before = int.Parse((await chart.GetAttributeAsync("data-points"))!);
        await dashboard.WaitForFunctionAsync("n => Number(document.querySelector(\"article[data-device='chartdemo'] .chart\").dataset.points) >= n + 5",
            before, new PageWaitForFunctionOptions { Timeout = 20_000 });
        await Expect(dashboard.Locator("#threshold-text")).ToHaveTextAsync("(300)");
        await Browser.ScreenshotAsync(dashboard, "dashboard-chart");
    }

    [Fact]
    public async Task The_dashboard_is_readable_on_a_phone()
    {
        var (up, url) = await StartUpAsync("--light", "150", "--id", "phone");
        await using var _ = up;
        await using var browser = await Browser.LaunchAsync();
        var dashboard = await browser.OpenAsync(url + "/", width: 390, height: 844);
        var card = dashboard.Locator("article.device[data-device='phone']");
        await Expect(card.Locator(".led")).ToHaveAttributeAsync("data-on", "true", Attribute);
        await Expect(card.Locator(".chart canvas")).ToBeVisibleAsync(Visible);

        // Nothing is wider than the phone's screen: no sideways scrolling.
        var overflow = await dashboard.EvaluateAsync<int>("document.documentElement.scrollWidth - window.innerWidth");
        Assert.True(overflow <= 0, $"the dashboard is {overflow}px wider than a 390px phone screen");
        await Browser.ScreenshotAsync(dashboard, "dashboard-phone");
        var hardware = await browser.OpenAsync(url + "/hardware", width: 390, height: 844);
        await Expect(hardware.Locator(".actuator[data-port='5'] .lamp")).ToHaveAttributeAsync("data-on", "true", Attribute);
        overflow = await hardware.EvaluateAsync<int>("document.documentElement.scrollWidth - window.innerWidth");
        Assert.True(overflow <= 0, $"the hardware page is {overflow}px wider than a 390px phone screen");
        await Browser.ScreenshotAsync(hardware, "hardware-phone");
    }

    [Fact]
    public async Task The_pages_load_nothing_from_the_internet()
    {
        var (up, url) = await StartUpAsync("--light", "500", "--id", "offline");
        await using var _ = up;
        await using var browser = await Browser.LaunchAsync();
        var context = await browser.Chromium.NewContextAsync();
        var page = await context.NewPageAsync();
        var foreign = new List<string>();
        page.Request += (_, request) =>
        {
            if (!request.Url.StartsWith(url, StringComparison.Ordinal) && !request.Url.StartsWith("data:", StringComparison.Ordinal))
            {
                foreign.Add(request.Url);
            }
        };
        var failed = new List<string>();
        page.Response += (_, response) =>
        {
            // The history and command API may not exist on this server; every other local file must load.
            if (response.Status >= 400 && !response.Url.Contains("/api/devices", StringComparison.Ordinal))
            {
                failed.Add($"{response.Status} {response.Url}");
            }
        };
        await page.GotoAsync(url + "/");
        await Expect(page.Locator("article.device[data-device='offline'] .chart canvas")).ToBeVisibleAsync(Visible);
        await page.GotoAsync(url + "/hardware");
        await Expect(page.Locator(".sensor[data-port='0']")).ToBeVisibleAsync(Visible);
        Assert.Empty(foreign);
        Assert.Empty(failed);
    }
}
