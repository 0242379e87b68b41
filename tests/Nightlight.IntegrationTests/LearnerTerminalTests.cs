using System.Net;
using System.Net.Sockets;
using System.Text.RegularExpressions;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>What a learner sees on the terminal in the first hour: the lesson's lines, in the lesson's order, and errors they can act on.</summary>
public partial class LearnerTerminalTests
{
    [Fact]
    public async Task Up_prints_the_lessons_lines_cause_before_effect_without_tracking_fields()
    {
        await using var up = NightlightCli.Start("up", "--mqtt-port", Ports.Free().ToString(), "--http-port", Ports.Free().ToString(),
            "--light", "412", "--interval", "200ms");
        // Starting a whole process takes long on a 2-core machine shared with parallel builds.
        await up.WaitForLineAsync("LED switched OFF", TimeSpan.FromSeconds(60));
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
        // The terminal names no internal client (the in-process server's and dashboard's client ids).
        Assert.DoesNotContain(up.StderrLines.Concat(lines), l => l.Contains("nightlight_server-", StringComparison.Ordinal) || l.Contains("nightlight_web-", StringComparison.Ordinal));
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

    [Fact]
    public async Task Amqps_is_refused_at_start_rather_than_spoken_in_plain_text()
    {
        using var data = new DataDir();
        await using var server = NightlightCli.Start("server", "--http-port", "0", "--data", data.Path, "--ingest", "amqp",
            "--amqp", "amqps://nightlight:secret@127.0.0.1:5671/");
        Assert.True(await server.WaitForExitAsync(TimeSpan.FromSeconds(30)), server.Describe());
        Assert.Equal(2, server.ExitCode);
        Assert.Contains("amqps:// (TLS to RabbitMQ) is not supported", server.Stderr);
        Assert.DoesNotContain("secret", server.Stderr);
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

    [Fact]
    public async Task Typed_text_shows_at_the_bottom_and_an_override_says_until_when_and_how_to_end_it()
    {
        var tmux = External.Require("tmux", "tmux");
        var http = Ports.Free();
        await using var session = await TmuxSession.StartAsync(tmux,
            $"dotnet {NightlightCli.Dll} up --mqtt-port {Ports.Free()} --http-port {http} --light 500 --interval 300ms");
        await session.WaitForScreenAsync(s => s.Contains("device online │", StringComparison.Ordinal));

        // Regression: typed text was not echoed (the status redraw erased it) and ended up glued to the status line.
        await session.SendKeysAsync("-l", "12");
        var screen = await session.WaitForScreenAsync(s => LastLine(s) == "> 12");
        await Task.Delay(1500); // three redraws of the status line
        Assert.Equal("> 12", LastLine(await session.WaitForScreenAsync(_ => true)));
        await session.SendKeysAsync("-l", "0");
        await session.SendKeysAsync("Enter");
        screen = await session.WaitForScreenAsync(s => s.Contains("Light set to 120", StringComparison.Ordinal) && LastLine(s).StartsWith("── ", StringComparison.Ordinal));
        var lines = Lines(screen);
        Assert.Contains("you                  | 120", lines);
        Assert.DoesNotContain(lines, l => l.Contains("online │", StringComparison.Ordinal) && l.Contains("12", StringComparison.Ordinal) && !l.Contains("last command", StringComparison.Ordinal));
        await session.WaitForScreenAsync(s => s.Contains("LED switched ON", StringComparison.Ordinal));

        // The dashboard's "LED off for 10 min": the server stops answering, and says so, until when, and how to end it.
        using var client = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{http}") };
        var sent = await client.PostAsync("/api/devices/nightlight1/commands",
            new StringContent("""{"led_on": false, "overrideFor": "10m"}""", System.Text.Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.Accepted, sent.StatusCode);
        screen = await session.WaitForScreenAsync(s => s.Contains("| Override: LED off until", StringComparison.Ordinal) && LastLine(s).Contains("override nightlight1", StringComparison.Ordinal));
        var until = OverrideUntil().Match(screen);
        Assert.True(until.Success, screen);
        // Ten minutes from now on the local clock (give or take a slow machine), across midnight too.
        var shown = TimeSpan.ParseExact(until.Groups[1].Value, @"hh\:mm\:ss", System.Globalization.CultureInfo.InvariantCulture);
        var off = (shown - DateTime.Now.AddMinutes(10).TimeOfDay).TotalSeconds;
        off = (off % 86_400 + 86_400 + 43_200) % 86_400 - 43_200;
        Assert.InRange(off, -60, 60);
        Assert.Contains("type 'resume' or press End override on the dashboard to end it", screen);
        Assert.StartsWith($"── override nightlight1 LED off until {until.Groups[1].Value} │ 1 device online", LastLine(screen));

        await session.SendKeysAsync("-l", "resume");
        await session.SendKeysAsync("Enter");
        screen = await session.WaitForScreenAsync(s => s.Contains("server → nightlight1 | Override ended; the rule decides again", StringComparison.Ordinal)
            && !LastLine(s).Contains("override", StringComparison.Ordinal));
        // The rule answers again: dark (120) turns the LED back on.
        screen = await session.WaitForScreenAsync(s => Lines(s).SkipWhile(l => !l.Contains("Override ended", StringComparison.Ordinal))
            .Any(l => l == "server → nightlight1 | Sending message: {\"led_on\": true}"));
        Assert.Equal(HttpStatusCode.NotFound, (await client.GetAsync("/api/devices/nightlight1/override")).StatusCode);
    }

    static List<string> Lines(string screen) => screen.Split('\n').Select(l => l.TrimEnd()).Where(l => l.Length > 0).ToList();

    static string LastLine(string screen) => Lines(screen) is { Count: > 0 } lines ? lines[^1] : "";

    [GeneratedRegex(@"\| Override: LED off until (\d\d:\d\d:\d\d), the rule is paused")]
    private static partial Regex OverrideUntil();

    /// <summary>Set to 1 to write the real output into the pages instead of checking them.</summary>
    const string UpdateDocsVariable = "NIGHTLIGHT_UPDATE_DOCS";

    [Fact]
    public async Task The_sample_output_in_the_docs_is_what_up_prints()
    {
        // Where a learner runs it: a directory of their own, the default data directory, the default ports (mapped back).
        using var work = new TempDirectory("docs");
        var mqtt = Ports.Free();
        var http = Ports.Free();
        await using var up = ProcessRunner.Start("dotnet", [NightlightCli.Dll, "up", "--light", "412", "--mqtt-port", mqtt.ToString(), "--http-port", http.ToString()],
            new Dictionary<string, string> { ["NO_COLOR"] = "1" }, work.Path);
        await up.WaitForLineAsync("LED switched OFF", TimeSpan.FromSeconds(60));
        up.Signal("INT");
        await up.WaitForExitAsync(TimeSpan.FromSeconds(20));
        var real = up.StdoutLines.Select(line => line.Replace($":{mqtt}", ":1883", StringComparison.Ordinal)
                .Replace($":{http}", ":5000", StringComparison.Ordinal).Replace(work.Path, "/home/you/nightlight", StringComparison.Ordinal))
            .ToList();
        real = real.Take(real.FindIndex(line => line.Contains("LED switched OFF", StringComparison.Ordinal)) + 1).ToList();
        var lesson = real.Where(line => !line.StartsWith("nightlight ", StringComparison.Ordinal)).ToList();
        Assert.Equal(5, lesson.Count);

        var root = new DirectoryInfo(AppContext.BaseDirectory);
        while (!File.Exists(Path.Combine(root.FullName, "Nightlight.slnx")))
        {
            root = root.Parent ?? throw new InvalidOperationException("Nightlight.slnx not found");
        }
        var update = Environment.GetEnvironmentVariable(UpdateDocsVariable) == "1";
        // docs/lesson.md step 1 shows the whole start, as printed; README shows the lesson's five lines (numbers vary).
        foreach (var page in new[] { "docs/lesson.md", "docs/lesson.zh-CN.md" })
        {
            CheckBlock(Path.Combine(root.FullName, page), "```sh\nnightlight up --light 412\n```\n\n```text\n", real, exact: true, update);
        }
        foreach (var page in new[] { "README.md", "README.zh-CN.md" })
        {
            CheckBlock(Path.Combine(root.FullName, page), "```text\ndevice nightlight1   | Sending telemetry", lesson, exact: false, update, keepStart: "```text\n");
        }
    }

    /// <summary>The lines of the text block that starts with <paramref name="start"/> are <paramref name="real"/>, or become them.</summary>
    static void CheckBlock(string file, string start, List<string> real, bool exact, bool update, string? keepStart = null)
    {
        var text = File.ReadAllText(file);
        var at = text.IndexOf(start, StringComparison.Ordinal);
        Assert.True(at >= 0, $"{file} has no block starting with {start}");
        var body = at + (keepStart ?? start).Length;
        var end = text.IndexOf("```\n", body, StringComparison.Ordinal);
        var shown = text[body..end].TrimEnd('\n').Split('\n').ToList();
        if (update)
        {
            File.WriteAllText(file, text[..body] + string.Join('\n', real) + "\n" + text[end..]);
            return;
        }
        // Regression: the pages showed a start without the History API and Storage lines that up prints.
        var hint = $"{file} shows output up no longer prints; run this test with {UpdateDocsVariable}=1 to write the real output in";
        if (exact)
        {
            Assert.True(real.SequenceEqual(shown), $"{hint}\n--- real ---\n{string.Join('\n', real)}\n--- shown ---\n{string.Join('\n', shown)}");
        }
        else
        {
            var shape = real.Select(Shape).ToList();
            Assert.True(shape.SequenceEqual(shown.Select(Shape)), $"{hint}\n--- real ---\n{string.Join('\n', real)}\n--- shown ---\n{string.Join('\n', shown)}");
        }
    }

    // A line with its numbers taken out: the README's light level follows the day and night.
    static string Shape(string line) => Numbers().Replace(line, "N");

    [GeneratedRegex(@"\d+")]
    private static partial Regex Numbers();
}
