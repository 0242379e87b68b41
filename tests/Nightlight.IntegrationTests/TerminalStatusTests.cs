using System.Text.RegularExpressions;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>
/// The live status line, on a real terminal: <c>nightlight up</c> runs inside a tmux session of a fixed size and the
/// test reads the screen as a learner would see it.
/// </summary>
public partial class TerminalStatusTests
{
    [Fact]
    public async Task Up_on_a_terminal_keeps_a_status_line_below_whole_lesson_and_log_lines()
    {
        var tmux = External.Require("tmux", "tmux");
        var mqtt = Ports.Free();
        await using var session = await TmuxSession.StartAsync(tmux,
            $"dotnet {NightlightCli.Dll} up --mqtt-port {mqtt} --http-port {Ports.Free()} --light 100 --interval 300ms");

        var screen = await session.WaitForScreenAsync(s => StatusLine().Match(s) is { Success: true } m && Rate(m) > 0);
        await using (var sender = await MqttProbe.ConnectAsync(mqtt))
        {
            await sender.PublishAsync("nightlight1/telemetry", "light=412");
        }
        screen = await session.WaitForScreenAsync(s => s.Contains("bad payloads 1", StringComparison.Ordinal) && s.Contains("Rejected telemetry", StringComparison.Ordinal));

        var lines = screen.Split('\n').Select(l => l.TrimEnd()).Where(l => l.Length > 0).ToList();
        // The status is the last line, once; everything above it is a whole lesson or log line, never mixed with it.
        Assert.Matches(StatusLine(), lines[^1]);
        Assert.Contains("1 device online", lines[^1]);
        Assert.Contains("last command nightlight1 {\"led_on\": true}", lines[^1]);
        Assert.Single(lines, l => l.Contains("online │", StringComparison.Ordinal));
        var above = lines[..^1];
        Assert.Contains(above, l => l == "server → nightlight1 | Message received: {\"light\": 100}");
        // The bar lines up: "device nightlight1" is padded to the width of "server → nightlight1".
        Assert.Contains(above, l => l == "device nightlight1   | Message received: {\"led_on\": true}");
        Assert.All(above.Where(l => l.Contains(" | ", StringComparison.Ordinal)), l => Assert.Matches(LessonLine(), l));
        Assert.Contains(above, l => LogLine().IsMatch(l) && l.Contains("Rejected telemetry from device nightlight1", StringComparison.Ordinal));
    }

    [Fact]
    public async Task No_status_flag_on_a_terminal_prints_plain_lines_only()
    {
        var tmux = External.Require("tmux", "tmux");
        await using var session = await TmuxSession.StartAsync(tmux,
            $"dotnet {NightlightCli.Dll} up --mqtt-port {Ports.Free()} --http-port {Ports.Free()} --light 100 --interval 300ms --no-status");

        var screen = await session.WaitForScreenAsync(s => Regex.Matches(s, "Message received").Count >= 6);
        Assert.DoesNotContain("online │", screen);
    }

    [Fact]
    public async Task Up_on_a_terminal_starts_with_the_lesson_and_no_internal_names()
    {
        var tmux = External.Require("tmux", "tmux");
        await using var session = await TmuxSession.StartAsync(tmux,
            $"dotnet {NightlightCli.Dll} up --mqtt-port {Ports.Free()} --http-port {Ports.Free()} --light 100 --interval 300ms");

        var screen = await session.WaitForScreenAsync(s => Regex.Matches(s, "LED switched ON").Count >= 1 && Regex.Matches(s, "Sending telemetry").Count >= 3);
        // Regression: five "info: Nightlight.Server.Ingest.MqttIngest[0] ..." lines and "(light, answer every)" sat in the banner.
        Assert.DoesNotContain("info:", screen);
        Assert.DoesNotContain("Nightlight.", screen);
        Assert.DoesNotContain("[0]", screen);
        Assert.DoesNotContain("answer every", screen);
        Assert.Contains("LED on below 300, broker", screen);
    }

    [Fact]
    public async Task A_server_without_its_broker_says_so_once_and_counts_no_device_online()
    {
        var tmux = External.Require("tmux", "tmux");
        var missing = Ports.Free();
        await using var session = await TmuxSession.StartAsync(tmux,
            $"dotnet {NightlightCli.Dll} server --http-port 0 --data data --broker mqtt://127.0.0.1:{missing}");

        var screen = await session.WaitForScreenAsync(s => s.Contains($"── no broker at mqtt://127.0.0.1:{missing}", StringComparison.Ordinal));
        await Task.Delay(TimeSpan.FromSeconds(6));
        screen = await session.WaitForScreenAsync(s => s.Contains("── no broker at", StringComparison.Ordinal));
        // Regression: a warning on every retry, and a status line that went on saying devices were online.
        Assert.Single(Regex.Matches(screen, "Cannot reach broker"));
        Assert.Contains("nightlight broker", screen);
        Assert.DoesNotContain("online", screen);
    }

    static double Rate(Match status) => double.Parse(status.Groups["in"].Value, System.Globalization.CultureInfo.InvariantCulture);

    [GeneratedRegex(@"^── \d+ devices? online │ in (?<in>\d+\.\d)/s out \d+\.\d/s │ bad payloads \d+", RegexOptions.Multiline)]
    private static partial Regex StatusLine();

    [GeneratedRegex(@"^(server → nightlight1|device nightlight1|nightlight) +\| +\S")]
    private static partial Regex LessonLine();

    [GeneratedRegex(@"^\d\d:\d\d:\d\d (info|warn|fail): ")]
    private static partial Regex LogLine();
}
