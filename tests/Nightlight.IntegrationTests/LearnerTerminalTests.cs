using System.Net;
using System.Net.Sockets;
using System.Text.RegularExpressions;
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

    static readonly string[][] HelpPages =
    [
        [], ["up"], ["broker"], ["server"], ["device"], ["fleet"], ["bench"], ["export"], ["storage-bench"],
        ["devices"], ["devices", "add"], ["devices", "add-server"], ["devices", "list"], ["devices", "rotate"],
        ["devices", "remove"], ["devices", "revoke-cert"],
    ];

    [Fact]
    public async Task Help_names_the_command_as_typed_and_says_each_default_once()
    {
        var pages = await Task.WhenAll(HelpPages.Select(command => Task.Run(() =>
            (Command: string.Join(' ', command), Output: ProcessRunner.Run("dotnet", [NightlightCli.Dll, .. command, "--help"], TimeSpan.FromSeconds(60))))));
        foreach (var (command, (exitCode, stdout, stderr)) in pages)
        {
            Assert.True(exitCode == 0, $"nightlight {command} --help: exit {exitCode}\n{stdout}\n{stderr}");
            // Regression: usage said "Nightlight up [options]", the assembly's name, not the command a learner types.
            var usage = stdout.Split('\n').SkipWhile(l => !l.StartsWith("Usage:", StringComparison.Ordinal)).Skip(1).First().Trim();
            Assert.StartsWith($"nightlight {command}".TrimEnd(), usage);
            // Regression: "(default 365) [default: 365]", the description's default and System.CommandLine's.
            foreach (var line in stdout.Split('\n'))
            {
                Assert.True(Regex.Matches(line, "default", RegexOptions.IgnoreCase).Count <= 1, $"nightlight {command} --help says a default twice: {line}");
            }
        }
    }

    [Fact]
    public async Task Export_from_a_directory_without_a_database_refuses_and_creates_nothing()
    {
        using var work = new TempDirectory("export");
        var wrong = Path.Combine(work.Path, "wrongdir");
        await using var export = ProcessRunner.Start("dotnet", [NightlightCli.Dll, "export", "--device", "nightlight1", "--data", wrong],
            new Dictionary<string, string> { ["NO_COLOR"] = "1" }, work.Path);
        Assert.True(await export.WaitForExitAsync(TimeSpan.FromSeconds(30)), export.Describe());
        Assert.Equal(2, export.ExitCode);
        // Regression: it made wrongdir/nightlight.db, an empty database, then said "no device".
        Assert.Equal([$"error: no Nightlight database at {wrong}/nightlight.db; --data names the directory a server stored in (default ./nightlight-data)"],
            export.StderrLines);
        Assert.Empty(export.StdoutLines);
        Assert.False(Path.Exists(wrong), "export created " + wrong);
        Assert.Empty(Directory.EnumerateFileSystemEntries(work.Path));
    }

    [Theory]
    [InlineData("--mqtt-port")]
    [InlineData("--http-port")]
    public async Task A_start_that_fails_on_a_taken_port_leaves_no_data_directory(string takenFlag)
    {
        using var work = new TempDirectory("start");
        using var taken = new TcpListener(IPAddress.Loopback, 0);
        taken.Start();
        var takenPort = ((IPEndPoint)taken.LocalEndpoint).Port;
        var mqtt = takenFlag == "--mqtt-port" ? takenPort : Ports.Free();
        var http = takenFlag == "--http-port" ? takenPort : Ports.Free();
        // Run where a learner would, with the default data directory ./nightlight-data.
        await using var up = ProcessRunner.Start("dotnet", [NightlightCli.Dll, "up", "--mqtt-port", mqtt.ToString(), "--http-port", http.ToString()],
            new Dictionary<string, string> { ["NO_COLOR"] = "1" }, work.Path);
        Assert.True(await up.WaitForExitAsync(TimeSpan.FromSeconds(60)), up.Describe());
        Assert.Equal(1, up.ExitCode);
        Assert.Contains($"error: port {takenPort} is already in use; choose another with {takenFlag}", up.StderrLines);
        // Regression: nightlight-data/nightlight.db and the device's state were left behind by a start that never ran.
        Assert.Empty(Directory.EnumerateFileSystemEntries(work.Path));
    }

    [Fact]
    public async Task The_bar_column_lines_up_for_a_short_id_beside_a_second_device()
    {
        var mqtt = Ports.Free();
        await using var up = NightlightCli.Start("up", "--mqtt-port", mqtt.ToString(), "--id", "a", "--light", "100", "--interval", "300ms");
        await up.WaitForLineAsync("device a ");
        await using var second = NightlightCli.Start("device", "--broker", $"mqtt://127.0.0.1:{mqtt}", "--id", "nightlight2", "--light", "700", "--interval", "300ms");
        await up.WaitForLineAsync("server → nightlight2 | Sending message");
        await up.WaitForCountAsync(line => line.StartsWith("server → a ", StringComparison.Ordinal), 4, "lines for device a");

        // Regression: the column was as wide as "server → a", then grew when nightlight2 spoke, leaving the bars above out of line.
        var lines = up.StdoutLines.ToList();
        var bars = lines.Select(line => line.IndexOf(" | ", StringComparison.Ordinal)).Distinct().ToList();
        Assert.True(bars.Count == 1, "bars at columns " + string.Join(", ", bars) + ":\n" + string.Join('\n', lines));
    }
}
