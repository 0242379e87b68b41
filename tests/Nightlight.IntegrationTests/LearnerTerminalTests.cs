using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>What a learner sees on the terminal in the first hour: the lesson's lines, in the lesson's order, and errors they can act on.</summary>
public class LearnerTerminalTests
{
    [Fact]
    public async Task Up_prints_the_lessons_lines_cause_before_effect_without_tracking_fields()
    {
        await using var up = NightlightCli.Start("up", "--mqtt-port", Ports.Free().ToString(), "--http-port", Ports.Free().ToString(),
            "--light", "412", "--interval", "200ms");
        await up.WaitForLineAsync("LED switched OFF");
        await up.TypeAsync("120");
        await up.WaitForLineAsync("LED switched ON");
        await up.WaitForCountAsync(line => line.Contains("| Sending telemetry", StringComparison.Ordinal), 15, "readings");
        up.Signal("INT");
        await up.WaitForExitAsync(TimeSpan.FromSeconds(15));

        var lines = up.StdoutLines.ToList();
        // The device's command lines are the lesson's payload; an ordered command's id and seq went to the log.
        var deviceReceived = lines.Where(l => l.StartsWith("device nightlight1", StringComparison.Ordinal) && l.Contains("Message received", StringComparison.Ordinal)).ToList();
        Assert.NotEmpty(deviceReceived);
        Assert.All(deviceReceived, l => Assert.Matches(@"\| Message received: \{""led_on"": (true|false)\}$", l));

        // Regression: the server's "Message received" came before the device's "Sending telemetry" in 26 of 43 readings.
        var sent = 0;
        var received = 0;
        foreach (var line in lines)
        {
            if (line.Contains("| Sending telemetry", StringComparison.Ordinal))
            {
                sent++;
            }
            else if (line.StartsWith("server", StringComparison.Ordinal) && line.Contains("Message received: {\"light\"", StringComparison.Ordinal))
            {
                received++;
                Assert.True(received <= sent, $"the server received reading {received} before the device said it sent it:\n{string.Join('\n', lines)}");
            }
        }
        Assert.True(received >= 10, up.Describe());
    }

    [Theory]
    [InlineData("--database", "nonsense", "--database 'nonsense' is not a PostgreSQL connection string")]
    [InlineData("--interval", "5sec", "--interval '5sec' is not a duration; say")]
    [InlineData("--light", "5000", "--light '5000': must be between 0 and 1023")]
    [InlineData("--mqtt-port", "99999", "--mqtt-port '99999': must be between 1 and 65535")]
    [InlineData("--threshold", "abc", "--threshold 'abc' is not a number")]
    public async Task A_bad_setting_gives_one_line_naming_the_flag_and_exit_2(string flag, string value, string expected)
    {
        using var data = new DataDir();
        var args = new List<string> { "up", "--http-port", Ports.Free().ToString(), "--data", data.Path, flag, value };
        if (flag != "--mqtt-port")
        {
            args.AddRange(["--mqtt-port", Ports.Free().ToString()]);
        }
        await using var up = NightlightCli.Start([.. args]);
        Assert.True(await up.WaitForExitAsync(TimeSpan.FromSeconds(30)), up.Describe());
        Assert.Equal(2, up.ExitCode);
        Assert.Contains($"error: {expected}", up.Stderr);
        Assert.DoesNotContain("   at ", up.Stderr);
        Assert.DoesNotContain("System.", up.Stderr);
        Assert.DoesNotContain("Options", up.Stderr);
    }

    [Theory]
    [InlineData("30")]
    [InlineData("7")]
    public async Task A_retention_without_a_unit_is_refused_before_it_deletes_anything(string retention)
    {
        using var data = new DataDir();
        await using var server = NightlightCli.Start("server", "--http-port", "0", "--data", data.Path, "--retention", retention);
        Assert.True(await server.WaitForExitAsync(TimeSpan.FromSeconds(30)), server.Describe());
        Assert.Equal(2, server.ExitCode);
        Assert.Contains($"error: --retention '{retention}' is not a duration with a unit; say 30d, 30h or 30m", server.Stderr);
    }
}
