using Microsoft.Playwright;

namespace Nightlight.Tests.Support;

/// <summary>
/// Debian's Chromium (package <c>chromium</c>), headless, driven by Playwright. Playwright's own browser downloads are
/// never used: the executable path points at the system browser.
/// </summary>
public sealed class Browser : IAsyncDisposable
{
    readonly IPlaywright _playwright;

    Browser(IPlaywright playwright, IBrowser chromium)
    {
        _playwright = playwright;
        Chromium = chromium;
    }

    public IBrowser Chromium { get; }

    /// <summary>Where screenshots go: tests/Nightlight.IntegrationTests/TestResults/screenshots, kept as test artifacts.</summary>
    public static string Screenshots { get; } = Directory.CreateDirectory(
        Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "..", "..", "..", "TestResults", "screenshots"))).FullName;

    public static async Task<Browser> LaunchAsync()
    {
        var executable = External.Require("/usr/bin/chromium", "chromium");
        var playwright = await Playwright.CreateAsync();
        var chromium = await playwright.Chromium.LaunchAsync(new BrowserTypeLaunchOptions
        {
            ExecutablePath = executable,
            Headless = true,
            Args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"],
        });
        return new Browser(playwright, chromium);
    }

    /// <summary>A page of its own size (a phone is 390×844).</summary>
    public async Task<IPage> OpenAsync(string url, int width = 1200, int height = 900)
    {
        var context = await Chromium.NewContextAsync(new BrowserNewContextOptions { ViewportSize = new ViewportSize { Width = width, Height = height } });
        var page = await context.NewPageAsync();
        await page.GotoAsync(url);
        return page;
    }

    public static Task ScreenshotAsync(IPage page, string name) =>
        page.ScreenshotAsync(new PageScreenshotOptions { Path = Path.Combine(Screenshots, name + ".png"), FullPage = true });

    public async ValueTask DisposeAsync()
    {
        await Chromium.DisposeAsync();
        _playwright.Dispose();
    }
}
