using System.Text.Json;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>A short run of <c>nightlight bench</c>: it runs and reports sane numbers. No timing assertions.</summary>
public class BenchSmokeTests
{
    /// <summary>
    /// Runs <c>nightlight bench ARGS --json FILE</c> to its end, which must be a success, and returns the process (for
    /// its lines) with the JSON it wrote; disposing the run stops the process and frees both.
    /// </summary>
    static async Task<BenchRun> RunAsync(params string[] args)
    {
        using var output = new TempDirectory("bench");
        var json = Path.Combine(output.Path, "bench.json");
        var bench = NightlightCli.Start(["bench", .. args, "--json", json]);
        JsonDocument? written = null;
        await bench.StopIfNotReadyAsync(async p =>
        {
            Assert.True(await p.WaitForExitAsync(TimeSpan.FromMinutes(3)), p.Describe());
            Assert.True(p.ExitCode == 0, p.Describe());
            written = JsonDocument.Parse(await File.ReadAllTextAsync(json));
        });
        return new BenchRun(bench, written!);
    }

    sealed record BenchRun(ProcessRunner Bench, JsonDocument Json) : IAsyncDisposable
    {
        public async ValueTask DisposeAsync()
        {
            Json.Dispose();
            await Bench.DisposeAsync();
        }
    }

    [Trait("Speed", "Slow")]
    [Fact]
    public async Task Bench_runs_against_the_embedded_broker_and_reports_every_reading_answered()
    {
        await using var run = await RunAsync("--devices", "20", "--rate", "200", "--duration", "3s", "--warmup", "1s",
            "--servers", "ours,naive");
        Assert.Contains(run.Bench.StdoutLines, l => l.StartsWith("ours ", StringComparison.Ordinal));
        Assert.Contains(run.Bench.StderrLines, l => l.Contains("answered", StringComparison.Ordinal));
        // Each second's progress line carries that second's p99, a latency a stall would show in.
        Assert.Contains(run.Bench.StderrLines, l => System.Text.RegularExpressions.Regex.Match(l, @"answered \d+ .* p99 (\d+\.\d) ms$") is { Success: true } m
            && double.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture) > 0);

        var results = run.Json.RootElement.GetProperty("results").EnumerateArray().ToList();
        Assert.Equal(["ours", "naive"], results.Select(r => r.GetProperty("server").GetString()));
        foreach (var result in results)
        {
            Assert.True(result.GetProperty("sent").GetInt64() > 300, result.ToString());
            Assert.Equal(0, result.GetProperty("lost").GetInt64());
            Assert.Equal(0, result.GetProperty("wrong").GetInt64());
            Assert.True(result.GetProperty("p50Ms").GetDouble() > 0, result.ToString());
            Assert.True(result.GetProperty("serverPeakMb").GetDouble() > 1, result.ToString());
        }
        // Only our server reports what it stored: every reading it was sent.
        Assert.Equal(results[0].GetProperty("sent").GetInt64(), results[0].GetProperty("stored").GetInt64());
        Assert.Equal(JsonValueKind.Null, results[1].GetProperty("stored").ValueKind);
        // And the time its process was paused for garbage collections, from .NET's counters on its /metrics.
        Assert.Equal(JsonValueKind.Number, results[0].GetProperty("gcPauseMs").ValueKind);
        Assert.Equal(JsonValueKind.Number, results[0].GetProperty("collections").ValueKind);
        Assert.Equal(JsonValueKind.Null, results[1].GetProperty("gcPauseMs").ValueKind);
    }

    [Fact]
    public async Task Bench_without_a_warm_up_measures_from_the_first_reading()
    {
        await using var run = await RunAsync("--devices", "10", "--rate", "200", "--duration", "2s", "--warmup", "0",
            "--servers", "naive");
        Assert.DoesNotContain(run.Bench.StderrLines, l => l.Contains("warming up", StringComparison.Ordinal));

        Assert.Equal(0, run.Json.RootElement.GetProperty("warmupSeconds").GetDouble());
        var result = run.Json.RootElement.GetProperty("results")[0];
        // Every reading of the 2 s counts: 400 offered, less the last moment's.
        Assert.InRange(result.GetProperty("sent").GetInt64(), 350, 400);
        Assert.Equal(0, result.GetProperty("lost").GetInt64());
        Assert.Equal(0, result.GetProperty("wrong").GetInt64());
    }

    [Fact]
    public async Task Bench_over_rounds_measures_each_server_once_a_round_and_gives_its_median_and_worst()
    {
        await using var run = await RunAsync("--devices", "5", "--rate", "50", "--duration", "1s", "--warmup", "1s",
            "--servers", "naive", "--rounds", "2");
        Assert.Contains(run.Bench.StderrLines, l => l.Contains("naive 2/2: warming up", StringComparison.Ordinal));
        Assert.Contains(run.Bench.StdoutLines, l => l.StartsWith("over 2 rounds", StringComparison.Ordinal));
        Assert.Contains(run.Bench.StdoutLines, l => l.StartsWith("naive    p50 ms", StringComparison.Ordinal));

        Assert.Equal(2, run.Json.RootElement.GetProperty("rounds").GetInt32());
        var results = run.Json.RootElement.GetProperty("results").EnumerateArray().ToList();
        Assert.Equal([1, 2], results.Select(r => r.GetProperty("round").GetInt32()));
        Assert.All(results, r => Assert.Equal("naive", r.GetProperty("server").GetString()));
        var p99 = results.Select(r => r.GetProperty("p99Ms").GetDouble()).ToList();
        var summary = Assert.Single(run.Json.RootElement.GetProperty("summary").EnumerateArray());
        Assert.Equal("naive", summary.GetProperty("server").GetString());
        Assert.Equal(2, summary.GetProperty("rounds").GetInt32());
        // Of two rounds the median is their mean, and the worst the larger.
        Assert.Equal(p99.Average(), summary.GetProperty("p99MsMedian").GetDouble(), 6);
        Assert.Equal(p99.Max(), summary.GetProperty("p99MsWorst").GetDouble(), 6);
        Assert.Equal(results.Sum(r => r.GetProperty("lost").GetInt64()), summary.GetProperty("lost").GetInt64());
    }

    [Fact]
    public async Task Bench_with_answers_only_for_changes_stores_every_reading_and_answers_each_change()
    {
        await using var run = await RunAsync("--broker", "inproc", "--devices", "20", "--rate", "200", "--duration", "3s", "--warmup", "1s",
            "--answer", "changes", "--flip-every", "5");
        Assert.Contains(run.Bench.StdoutLines, l => l.Contains("answers only readings that change a LED", StringComparison.Ordinal));

        Assert.Equal("changes", run.Json.RootElement.GetProperty("answer").GetString());
        var result = Assert.Single(run.Json.RootElement.GetProperty("results").EnumerateArray());
        var sent = result.GetProperty("sent").GetInt64();
        var toAnswer = result.GetProperty("toAnswer").GetInt64();
        Assert.True(sent > 300, result.ToString());
        // The light changes every fifth reading of each of the 20 devices: one answer per change, give or take where
        // each device's readings begin and end in the measured window.
        Assert.InRange(toAnswer, sent / 5 - 20, sent / 5 + 20);
        Assert.Equal(toAnswer, result.GetProperty("answered").GetInt64());
        Assert.Equal(0, result.GetProperty("lost").GetInt64());
        Assert.Equal(0, result.GetProperty("wrong").GetInt64());
        Assert.Equal(sent, result.GetProperty("stored").GetInt64());
        Assert.Equal(0, result.GetProperty("storeDropped").GetInt64());
        // Stored per second is the rate while readings were sent (200 offered, counted in batches of a fifth of a
        // second), and the lag says when the last one was written.
        Assert.InRange(result.GetProperty("storedPerSecond").GetDouble(), 100, 300);
        Assert.InRange(result.GetProperty("storeLagSeconds").GetDouble(), 0, 30);
    }

    [Fact]
    public async Task Bench_refuses_answers_only_for_changes_with_a_baseline_server()
    {
        await using var bench = NightlightCli.Start("bench", "--devices", "2", "--rate", "10", "--duration", "1s", "--servers", "naive", "--answer", "changes");
        Assert.True(await bench.WaitForExitAsync(TimeSpan.FromMinutes(1)), bench.Describe());
        Assert.Equal(1, bench.ExitCode);
        Assert.Contains(bench.StderrLines.Concat(bench.StdoutLines), l => l.Contains("only our server answers only changes", StringComparison.Ordinal));
    }

    /// <summary>Regression: with the server inside the broker process there is no server CPU to report, and NaN broke the JSON.</summary>
    [Fact]
    public async Task Bench_with_the_server_in_the_broker_process_answers_every_reading_and_writes_its_json()
    {
        await using var run = await RunAsync("--broker", "inproc", "--devices", "20", "--rate", "200", "--duration", "3s", "--warmup", "1s");
        Assert.Contains(run.Bench.StdoutLines, l => l.StartsWith("inproc ", StringComparison.Ordinal));

        var result = Assert.Single(run.Json.RootElement.GetProperty("results").EnumerateArray());
        Assert.Equal("inproc", result.GetProperty("server").GetString());
        Assert.True(result.GetProperty("sent").GetInt64() > 300, result.ToString());
        Assert.Equal(0, result.GetProperty("lost").GetInt64());
        Assert.Equal(0, result.GetProperty("wrong").GetInt64());
        Assert.Equal(JsonValueKind.Null, result.GetProperty("serverCpuSeconds").ValueKind);
        Assert.True(result.GetProperty("brokerCpuSeconds").GetDouble() > 0, result.ToString());
    }

    [Fact]
    public async Task Bench_compares_with_the_lesson_python_server()
    {
        External.RequirePahoPython();
        await using var bench = NightlightCli.Start("bench", "--devices", "10", "--rate", "100", "--duration", "2s", "--warmup", "1s", "--servers", "lesson");
        Assert.True(await bench.WaitForExitAsync(TimeSpan.FromMinutes(3)), bench.Describe());
        Assert.True(bench.ExitCode == 0, bench.Describe());
        Assert.Contains(bench.StdoutLines, l => l.StartsWith("lesson ", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Bench_reports_mosquitto_s_cpu_and_memory_beside_the_servers()
    {
        External.Require("mosquitto", "mosquitto");
        await using var run = await RunAsync("--broker", "mosquitto", "--devices", "10", "--rate", "100", "--duration", "2s", "--warmup", "0",
            "--servers", "naive");
        Assert.Contains(run.Bench.StdoutLines, l => l.Contains("broker Mosquitto", StringComparison.Ordinal));
        var result = run.Json.RootElement.GetProperty("results")[0];
        Assert.Equal(0, result.GetProperty("lost").GetInt64());
        // Read from /proc of the Mosquitto process the bench started: it used some CPU and holds some memory.
        Assert.True(result.GetProperty("brokerCpuSeconds").GetDouble() >= 0, result.ToString());
        Assert.True(result.GetProperty("brokerPeakMb").GetDouble() > 0.5, result.ToString());
        Assert.True(result.GetProperty("brokerMb").GetDouble() > 0.5, result.ToString());
    }

    [Fact]
    public async Task Bench_runs_the_same_fleet_on_our_broker_and_mosquitto_in_turn_and_compares_them_in_one_table()
    {
        External.Require("mosquitto", "mosquitto");
        await using var run = await RunAsync("--broker", "embedded,mosquitto", "--devices", "10", "--rate", "100", "--duration", "2s",
            "--warmup", "0", "--servers", "ours");
        Assert.Contains(run.Bench.StdoutLines, l => l.Contains("brokers embedded (nightlight broker), Mosquitto (started by the bench), measured in turn", StringComparison.Ordinal));
        Assert.Contains(run.Bench.StdoutLines, l => l.StartsWith("embedded   ours ", StringComparison.Ordinal));
        Assert.Contains(run.Bench.StdoutLines, l => l.StartsWith("mosquitto  ours ", StringComparison.Ordinal));
        var results = run.Json.RootElement.GetProperty("results").EnumerateArray().ToList();
        Assert.Equal(["embedded", "mosquitto"], results.Select(r => r.GetProperty("broker").GetString()));
        foreach (var r in results)
        {
            Assert.Equal("ours", r.GetProperty("server").GetString());
            Assert.Equal(0, r.GetProperty("lost").GetInt64());
            Assert.True(r.GetProperty("answered").GetInt64() >= 150, r.ToString());
            Assert.True(r.GetProperty("brokerMb").GetDouble() > 0.5, r.ToString());
        }
        // Each row read its own broker's /proc: the .NET broker is far larger than Mosquitto.
        Assert.True(results[0].GetProperty("brokerMb").GetDouble() > results[1].GetProperty("brokerMb").GetDouble() * 3, string.Join(" ", results));
    }

    [Fact]
    public async Task Bench_refuses_a_list_of_brokers_that_names_an_address()
    {
        await using var bench = NightlightCli.Start("bench", "--broker", "embedded,mqtt://127.0.0.1:1", "--devices", "1", "--duration", "1s");
        Assert.True(await bench.WaitForExitAsync(TimeSpan.FromMinutes(1)), bench.Describe());
        Assert.NotEqual(0, bench.ExitCode);
        Assert.Contains("a list of brokers may name embedded, inproc and mosquitto", bench.Describe());
    }

    [Fact]
    public async Task Bench_idle_reports_connect_time_and_memory_per_connection_for_our_broker_and_mosquitto()
    {
        External.Require("mosquitto", "mosquitto");
        await using var run = await RunAsync("--idle", "40", "--broker", "embedded,mosquitto");
        Assert.Contains(run.Bench.StdoutLines, l => l.StartsWith("embedded ", StringComparison.Ordinal));
        Assert.Contains(run.Bench.StdoutLines, l => l.StartsWith("mosquitto ", StringComparison.Ordinal));
        Assert.Equal("idle", run.Json.RootElement.GetProperty("mode").GetString());
        var results = run.Json.RootElement.GetProperty("results").EnumerateArray().ToList();
        Assert.Equal(["embedded", "mosquitto"], results.Select(r => r.GetProperty("broker").GetString()));
        foreach (var r in results)
        {
            Assert.Equal(40, r.GetProperty("connections").GetInt32());
            Assert.True(r.GetProperty("connectSeconds").GetDouble() > 0, r.ToString());
            Assert.True(r.GetProperty("rssBeforeMb").GetDouble() > 0.5 && r.GetProperty("rssAfterMb").GetDouble() > 0.5, r.ToString());
            Assert.Equal(JsonValueKind.Number, r.GetProperty("kbPerConnection").ValueKind);
        }
        // Our broker is a .NET process and Mosquitto a small C one: their sizes tell which process was read.
        Assert.True(results[0].GetProperty("rssBeforeMb").GetDouble() > results[1].GetProperty("rssBeforeMb").GetDouble(), string.Join(" ", results));
    }
}
