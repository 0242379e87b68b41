using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Microsoft.Extensions.Options;
using Nightlight.Protocol;

namespace Nightlight.Cli.Bench;

/// <summary>
/// <c>nightlight bench</c>: starts the broker (unless external) and each server under test as their own processes,
/// drives them with a fleet of simulated devices from this process, and prints a table (stdout) and JSON.
/// Progress goes to standard error once a second.
/// </summary>
sealed class BenchService(IOptions<BenchOptions> options, IHostApplicationLifetime lifetime, ILogger<BenchService> logger) : BackgroundService
{
    public int ExitCode { get; private set; }

    /// <summary>Our server stores what it is sent: into a fresh directory per run, deleted at the end.</summary>
    static readonly string _dataRoot = Path.Combine(Path.GetTempPath(), $"nightlight-bench-{Environment.ProcessId}");

    sealed record Result(string Broker, string Server, int Devices, BenchFigures Figures, double ServerCpuSeconds, double ServerPeakMb,
        double BrokerCpuSeconds, double BrokerPeakMb, double BrokerMb, double GeneratorCpuSeconds, double GeneratorPeakMb, StoreFigures? Store, int Round);

    /// <summary>
    /// What our server stored of the measured readings (its /metrics), and what it dropped for a full queue.
    /// <paramref name="StoredPerSecond"/>: the rate while the readings were being sent; <paramref name="LagSeconds"/>:
    /// how long after the last reading was sent the store wrote its last one.
    /// </summary>
    sealed record StoreFigures(long Stored, long Dropped, double StoredPerSecond, double LagSeconds, double GcPauseMs, long Collections);

    /// <summary>Our server's counters on its /metrics: readings stored and dropped, and .NET's garbage collections.</summary>
    readonly record struct ServerCounters(long Stored, long Dropped, double GcPauseSeconds, long Collections)
    {
        public bool SameStore(ServerCounters other) => Stored == other.Stored && Dropped == other.Dropped;
    }

    static readonly HttpClient _metricsClient = new() { Timeout = TimeSpan.FromSeconds(10) };

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        // The generator's sockets complete on the socket engine's thread instead of handing every completion to the
        // thread pool: its work per received command is a few lines, and the hand-over cost more. It shares the
        // machine with what it measures, so what it spends is taken from them. Read by .NET at the first socket
        // operation; the broker and servers it starts run with their own settings.
        ChildProcess.SetForThisProcessOnly("DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS", "1");
        try
        {
            await RunAsync(stoppingToken);
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
        }
        catch (Exception e) when (e is InvalidOperationException or FormatException or IOException or MQTTnet.Exceptions.MqttCommunicationException)
        {
            logger.LogError("bench failed: {Error}", e.Message);
            ExitCode = 1;
            Environment.ExitCode = 1;
        }
        finally
        {
            if (Directory.Exists(_dataRoot))
            {
                Directory.Delete(_dataRoot, recursive: true);
            }
            lifetime.StopApplication();
        }
    }

    async Task RunAsync(CancellationToken stoppingToken)
    {
        var o = options.Value;
        if (o.Idle > 0)
        {
            await RunIdleAsync(o, stoppingToken);
            return;
        }
        var duration = Durations.Parse(o.Duration, "Bench:Duration");
        var warmup = Durations.IsZero(o.Warmup) ? TimeSpan.Zero : Durations.Parse(o.Warmup, "Bench:Warmup");
        var servers = o.Servers.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        foreach (var server in servers)
        {
            if (server is not ("ours" or "lesson" or "naive" or "external"))
            {
                throw new FormatException($"Bench:Servers: '{server}' is not one of ours, lesson, naive, external");
            }
        }

        if (o.Answer is not ("every" or "changes"))
        {
            throw new FormatException($"Bench:Answer: '{o.Answer}' is not every or changes");
        }
        if (o.Answer == "changes" && servers.Any(s => s != "ours"))
        {
            throw new FormatException("Bench:Answer changes: only our server answers only changes; use --servers ours");
        }
        var credentials = string.IsNullOrEmpty(o.Credentials) ? null : FleetOptions.ReadCredentials(o.Credentials);
        if (credentials is not null && servers.Any(s => s != "ours"))
        {
            throw new FormatException("Bench:Credentials: only the 'ours' server authenticates; use --servers ours");
        }
        if (credentials is not null && credentials.Count < o.Devices)
        {
            throw new FormatException($"Bench:Credentials: {o.Credentials} has {credentials.Count} devices, fewer than Bench:Devices {o.Devices}");
        }
        // A list of brokers the bench starts (embedded, inproc, mosquitto) runs the same fleet on each in turn, so one
        // table compares them from one run.
        var brokers = o.Broker.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (brokers.Length > 1 && brokers.Any(b => b is not ("embedded" or "inproc" or "mosquitto")))
        {
            throw new FormatException($"Bench:Broker: '{o.Broker}': a list of brokers may name embedded, inproc and mosquitto, measured in turn; a cluster is mqtt://a,mqtt://b");
        }
        if (!string.IsNullOrEmpty(o.StoredAcks) && servers.Any(s => s != "ours"))
        {
            throw new FormatException("Bench:StoredAcks: only our server acknowledges stored readings; use --servers ours");
        }
        if (brokers.Contains("inproc") && servers.Any(s => s != "ours"))
        {
            throw new FormatException("Bench:Broker inproc runs our server inside the broker process; use --servers ours");
        }
        var storedAcks = o.StoredAcks == "on";
        var results = new List<Result>();
        BrokerAddress? address = null;
        foreach (var name in brokers.Length > 1 ? brokers : [o.Broker])
        {
            if (brokers.Length > 1)
            {
                Progress($"broker {name}");
            }
            address = await RunOnBrokerAsync(o, name, servers, duration, warmup, credentials, storedAcks, results, stoppingToken);
        }
        PrintTable(results, o, address!, brokers.Length > 1);
        if (!string.IsNullOrEmpty(o.Json))
        {
            await WriteJsonAsync(o, duration, warmup, results, stoppingToken);
        }
    }

    /// <summary>
    /// The rounds of <paramref name="servers"/> on one broker (<paramref name="brokerName"/>: embedded, inproc, mosquitto,
    /// or mqtt:// addresses), each result added to <paramref name="results"/>; returns the address the devices used.
    /// </summary>
    async Task<BrokerAddress> RunOnBrokerAsync(BenchOptions o, string brokerName, string[] servers, TimeSpan duration, TimeSpan warmup,
        List<(string Id, string Secret)>? credentials, bool storedAcks, List<Result> results, CancellationToken stoppingToken)
    {
        // inproc: one `nightlight up --no-device` process runs the broker and our server, linked in memory.
        var inProcess = brokerName == "inproc";
        var broker = brokerName switch
        {
            "embedded" or "inproc" => await StartBrokerAsync(withServer: inProcess),
            "mosquitto" => await StartMosquittoAsync(),
            _ => null,
        };
        // The broker's CPU time and memory, from /proc: one the bench started, or an external one the caller named.
        var brokerPid = broker?.Process.Pid ?? o.BrokerPid;
        await using var brokerProcess = broker?.Process;
        var answerChanges = o.Answer == "changes";
        // An external broker may be a cluster (mqtt://a,mqtt://b): the devices are spread over its nodes.
        var addresses = broker is null ? Nightlight.Mqtt.ConnectionSettings.ParseBrokers(brokerName) : [new BrokerAddress("mqtt", "127.0.0.1", broker.Value.Port)];
        var address = addresses[0];
        await using var fleet = new LoadGenerator(o.FlipEvery, answerChanges, numbered: !string.IsNullOrEmpty(o.StoredAcks), storedAcks: storedAcks);
        Progress($"connecting {o.Devices} devices to {string.Join(", ", addresses)}");
        var connectClock = Stopwatch.StartNew();
        var lastShown = 0;
        await fleet.ConnectAsync(addresses, o.Devices, n =>
        {
            if (n == o.Devices || n - Volatile.Read(ref lastShown) >= 1000)
            {
                Volatile.Write(ref lastShown, n);
                Progress($"connected {n}/{o.Devices}");
            }
        }, stoppingToken, credentials);
        Progress($"{o.Devices} devices connected in {connectClock.Elapsed.TotalSeconds:F1} s");

        // Rounds measure the servers in turn (naive, ours, naive, ours, ...), so that a spell of noise on a shared
        // machine falls on both of them rather than on whichever ran then; the summary gives each one's median and worst.
        foreach (var (round, name) in Enumerable.Range(1, o.Rounds).SelectMany(r => servers.Select(name => (r, name))))
        {
            var label = o.Rounds == 1 ? name : $"{name} {round}/{o.Rounds}";
            var metricsPort = inProcess ? broker!.Value.HttpPort : name == "ours" ? FreePort() : 0;
            await using var server = inProcess ? null : await StartServerAsync(name, address, o, metricsPort);
            fleet.Reset(newServer: true);
            // The store is idle here (a new server, or the last round's readings all written): what it writes from now
            // on is this round's warm-up and window.
            var storedBefore = metricsPort > 0 ? (await SettledStoreAsync(metricsPort, Stopwatch.StartNew(), stoppingToken)).Counters : default;
            if (warmup > TimeSpan.Zero)
            {
                Progress($"{label}: warming up for {warmup.TotalSeconds:F0} s at {o.Rate:F0} readings/s");
            }
            // The window follows the warm-up without a pause (see LoadGenerator.SendAsync).
            var sending = fleet.SendAsync(o.Rate, warmup, duration, stoppingToken);
            await Task.WhenAny(fleet.Measuring, sending);
            var clock = Stopwatch.StartNew();
            var serverCpu = server?.CpuSeconds ?? double.NaN;
            var brokerCpu = brokerPid is { } pid ? ProcStats.CpuSeconds(pid) : double.NaN;
            var ownCpu = ProcStats.CpuSeconds(Environment.ProcessId);
            var gcBefore = metricsPort > 0 ? await ScrapeAsync(metricsPort, stoppingToken) : default;
            using var ticker = new PeriodicTimer(TimeSpan.FromSeconds(1));
            long lastSent = 0, lastReceived = 0, lastMeasured = 0;
            // The store's count after the first second, and when sending ends: the difference over the time between is
            // the rate it kept up while readings arrived. Both counts trail the readings by the same flush and write
            // time, which a count taken only at the end would charge to the rate.
            (TimeSpan At, long Stored)? storeFrom = null;
            while (!sending.IsCompleted)
            {
                // Sending ends between two ticks: its end is taken when it comes, not at the next tick (up to a second
                // later, which understated the rate the store kept up and its lag behind the last reading).
                var tick = ticker.WaitForNextTickAsync(stoppingToken).AsTask();
                if (await Task.WhenAny(sending, tick) != tick || !await tick)
                {
                    break;
                }
                if (metricsPort > 0 && storeFrom is null)
                {
                    storeFrom = (clock.Elapsed, (await ScrapeAsync(metricsPort, stoppingToken)).Stored);
                }
                var sent = fleet.Sent;
                var received = fleet.Received;
                Progress($"{label}: {clock.Elapsed.TotalSeconds,4:F0}/{duration.TotalSeconds:F0} s  sent {sent} (+{sent - lastSent}/s)  answered {received} (+{received - lastReceived}/s)" +
                    (answerChanges ? $" of {fleet.Expected} to answer" : "") + RecentLatency(fleet.RecentP99Ms(ref lastMeasured)));
                (lastSent, lastReceived) = (sent, received);
            }
            await sending;
            var sentBy = clock.Elapsed;
            (TimeSpan At, long Stored)? storeTo = metricsPort > 0 && storeFrom is not null
                ? (sentBy, (await ScrapeAsync(metricsPort, stoppingToken)).Stored)
                : null;
            // Watched from the last reading sent, beside the wait for answers, so the time the store wrote its last
            // reading is known to a tenth of a second.
            var settling = metricsPort > 0 ? SettledStoreAsync(metricsPort, clock, stoppingToken) : null;
            await fleet.DrainAsync(TimeSpan.FromSeconds(5));
            if (fleet.WarmupUnanswered > 0)
            {
                // A server that dropped readings in the warm-up may hold a LED state other than the one its last
                // readings call for; with --answer changes its next answer then pairs with the wrong reading.
                Progress($"{label}: warning: {fleet.WarmupUnanswered} answers of the warm-up never came; lost and wrong answers in the measured window may follow from them");
            }
            var figures = fleet.Figures(duration);
            var serverCpuUsed = (server?.CpuSeconds ?? double.NaN) - serverCpu;
            var brokerCpuUsed = brokerPid is { } usedPid ? ProcStats.CpuSeconds(usedPid) - brokerCpu : double.NaN;
            var ownCpuUsed = ProcStats.CpuSeconds(Environment.ProcessId) - ownCpu;
            StoreFigures? store = null;
            if (settling is not null)
            {
                var (after, storedBy) = await settling;
                // Counted from before the warm-up, as the store writes the warm-up's last readings inside the window.
                var stored = after.Stored - storedBefore.Stored - fleet.WarmupSent;
                // Runs too short for a window of a second: the measured readings over the time until the last was stored.
                var perSecond = storeTo is { } to && storeFrom is { } from && (to.At - from.At).TotalSeconds >= 1
                    ? (to.Stored - from.Stored) / (to.At - from.At).TotalSeconds
                    : stored / Math.Max(duration.TotalSeconds, storedBy.TotalSeconds);
                store = new StoreFigures(stored, after.Dropped - storedBefore.Dropped, perSecond, Math.Max(0, (storedBy - sentBy).TotalSeconds),
                    (after.GcPauseSeconds - gcBefore.GcPauseSeconds) * 1000, after.Collections - gcBefore.Collections);
            }
            results.Add(new Result(broker is null ? address.ToString() : brokerName, inProcess ? "inproc" : name, o.Devices, figures,
                serverCpuUsed, server?.PeakMemoryMb ?? double.NaN,
                brokerCpuUsed, brokerPid is { } peakPid ? ProcStats.PeakMemoryMb(peakPid) : double.NaN,
                brokerPid is { } rssPid ? ProcStats.MemoryMb(rssPid) : double.NaN,
                ownCpuUsed, ProcStats.PeakMemoryMb(Environment.ProcessId), store, round));
        }

        if (storedAcks)
        {
            Progress($"stored acknowledgements received by the devices{(brokerName == o.Broker ? "" : $" on {brokerName}")}: {fleet.StoredAcks}");
        }
        return address;
    }

    static Task WriteJsonAsync(BenchOptions o, TimeSpan duration, TimeSpan warmup, List<Result> results, CancellationToken stoppingToken)
    {
        var document = new
        {
            machine = new { cores = Environment.ProcessorCount, os = System.Runtime.InteropServices.RuntimeInformation.OSDescription, dotnet = Environment.Version.ToString() },
            broker = o.Broker,
            devices = o.Devices,
            rate = o.Rate,
            flipEvery = o.FlipEvery,
            answer = o.Answer,
            durationSeconds = duration.TotalSeconds,
            warmupSeconds = warmup.TotalSeconds,
            rounds = o.Rounds,
            results = results.Select(r => new
            {
                broker = r.Broker,
                server = r.Server,
                round = r.Round,
                offeredPerSecond = r.Figures.Offered,
                achievedPerSecond = r.Figures.Achieved,
                p50Ms = r.Figures.P50Ms,
                p95Ms = r.Figures.P95Ms,
                p99Ms = r.Figures.P99Ms,
                maxMs = r.Figures.MaxMs,
                sent = r.Figures.Sent,
                toAnswer = r.Figures.Expected,
                answered = r.Figures.Answered,
                lost = r.Figures.Lost,
                wrong = r.Figures.Wrong,
                // No server process of its own with external servers or --broker inproc: null, as JSON has no NaN.
                serverCpuSeconds = NullIfNaN(r.ServerCpuSeconds),
                serverPeakMb = NullIfNaN(r.ServerPeakMb),
                brokerCpuSeconds = NullIfNaN(r.BrokerCpuSeconds),
                brokerPeakMb = NullIfNaN(r.BrokerPeakMb),
                // Its resident memory at the end of the window (VmRSS), beside the peak (VmHWM).
                brokerMb = NullIfNaN(r.BrokerMb),
                generatorCpuSeconds = r.GeneratorCpuSeconds,
                generatorPeakMb = r.GeneratorPeakMb,
                // Our server only: readings it stored from the measured window (per second while they were sent, and
                // how long after the last was sent it stored the last), and dropped.
                storedPerSecond = r.Store?.StoredPerSecond,
                storeLagSeconds = r.Store?.LagSeconds,
                stored = r.Store?.Stored,
                storeDropped = r.Store?.Dropped,
                // Our server's process (with inproc, the broker's too): time paused for garbage collections, and their number.
                gcPauseMs = r.Store?.GcPauseMs,
                collections = r.Store?.Collections,
            }),
            // Each server over its rounds: the median and the worst of its latencies, what it lost and got wrong.
            summary = Summarize(results),
        };
        return WriteJsonFileAsync(o.Json!, document, stoppingToken);
    }

    /// <summary>The run's figures as indented camel-case JSON, for --json.</summary>
    static async Task WriteJsonFileAsync(string path, object document, CancellationToken cancellationToken)
    {
        await File.WriteAllTextAsync(path, JsonSerializer.Serialize(document, new JsonSerializerOptions { WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.CamelCase }), cancellationToken);
        Progress($"results written to {path}");
    }

    static double? NullIfNaN(double value) => double.IsNaN(value) ? null : value;

    /// <summary>
    /// Our server's counters: stored readings, readings dropped for a full queue (in-process link or store), and the
    /// time its process spent paused for garbage collections, with their number.
    /// </summary>
    static async Task<ServerCounters> ScrapeAsync(int port, CancellationToken cancellationToken)
    {
        var url = $"http://127.0.0.1:{port}/metrics";
        string text;
        try
        {
            text = await _metricsClient.GetStringAsync(url, cancellationToken);
        }
        catch (Exception e) when (e is HttpRequestException || (e is TaskCanceledException && !cancellationToken.IsCancellationRequested))
        {
            throw new InvalidOperationException($"could not read our server's counters at {url}: {e.Message}", e);
        }
        long stored = 0, dropped = 0, collections = 0;
        var paused = 0.0;
        foreach (var line in text.Split('\n'))
        {
            var space = line.LastIndexOf(' ');
            if (line.StartsWith('#') || space < 0
                || !double.TryParse(line.AsSpan(space + 1), NumberStyles.Float, CultureInfo.InvariantCulture, out var value))
            {
                continue;
            }
            if (line.StartsWith("nightlight_readings_stored_total", StringComparison.Ordinal))
            {
                stored += (long)value;
            }
            else if (line.StartsWith("nightlight_store_dropped_total", StringComparison.Ordinal) || line.StartsWith("nightlight_telemetry_dropped_total", StringComparison.Ordinal))
            {
                dropped += (long)value;
            }
            else if (line.StartsWith("dotnet_gc_pause_time_seconds_total", StringComparison.Ordinal))
            {
                paused += value;
            }
            else if (line.StartsWith("dotnet_gc_collections_total", StringComparison.Ordinal))
            {
                collections += (long)value;
            }
        }
        return new ServerCounters(stored, dropped, paused, collections);
    }

    /// <summary>
    /// The counters once the store has written what it was handed (unchanged for a second, or after 60 s), and when on
    /// <paramref name="clock"/> they last changed, to a tenth of a second.
    /// </summary>
    static async Task<(ServerCounters Counters, TimeSpan LastChange)> SettledStoreAsync(int port, Stopwatch clock, CancellationToken cancellationToken)
    {
        var last = await ScrapeAsync(port, cancellationToken);
        var lastChange = clock.Elapsed;
        var deadline = clock.Elapsed + TimeSpan.FromSeconds(60);
        while (clock.Elapsed - lastChange < TimeSpan.FromSeconds(1) && clock.Elapsed < deadline)
        {
            await Task.Delay(TimeSpan.FromMilliseconds(100), cancellationToken);
            var now = await ScrapeAsync(port, cancellationToken);
            if (!now.SameStore(last))
            {
                lastChange = clock.Elapsed;
            }
            last = now;
        }
        return (last, lastChange);
    }

    /// <summary>The progress line's p99 of the answers that came in the second just gone: a stall shows when it happens.</summary>
    static string RecentLatency(double p99Ms) =>
        double.IsNaN(p99Ms) ? "  p99 -" : string.Create(System.Globalization.CultureInfo.InvariantCulture, $"  p99 {p99Ms:F1} ms");

    static void Progress(string line) => Console.Error.WriteLine($"bench | {line}");

    static string DescribeBroker(string broker, BrokerAddress address) => broker switch
    {
        "embedded" => "embedded (nightlight broker)",
        "inproc" => "embedded, our server in its process (nightlight up --no-device; CPU and memory under brk)",
        "mosquitto" => "Mosquitto (started by the bench)",
        _ => address.ToString(),
    };

    /// <summary>The table; with several brokers (<paramref name="byBroker"/>) a first column says which each row ran on.</summary>
    static void PrintTable(List<Result> results, BenchOptions o, BrokerAddress address, bool byBroker)
    {
        static string F(double v, string format = "F1") => double.IsNaN(v) ? "-" : v.ToString(format, CultureInfo.InvariantCulture);
        var brokers = byBroker
            ? "brokers " + string.Join(", ", results.Select(r => r.Broker).Distinct().Select(b => DescribeBroker(b, address))) + ", measured in turn"
            : "broker " + DescribeBroker(o.Broker, address);
        Console.WriteLine($"nightlight bench: {o.Devices} devices, {o.Rate:F0} readings/s offered, {brokers}, {Environment.ProcessorCount} cores, light changes every {o.FlipEvery} readings per device");
        if (o.Answer == "changes")
        {
            Console.WriteLine("our server answers only readings that change a LED; achieved/s, latency and lost count those answers");
        }
        var brokerColumn = byBroker ? $"{"broker",-10} " : "";
        Console.WriteLine($"{brokerColumn}{"server",-8} {"offered/s",10} {"achieved/s",11} {"p50 ms",8} {"p95 ms",8} {"p99 ms",8} {"max ms",8} {"lost",8} {"wrong",6} {"stored/s",9} {"st.lag s",8} {"st.drop",8} {"gc ms",7} {"GCs",4} {"srv CPU s",10} {"srv MB",7} {"brk CPU s",10} {"brk MB",7} {"brk now",7} {"gen CPU s",10} {"gen MB",7}");
        foreach (var r in results)
        {
            var f = r.Figures;
            var (stored, lag, dropped, paused, collections) = r.Store is { } s
                ? (F(s.StoredPerSecond, "F0"), F(s.LagSeconds), s.Dropped.ToString(CultureInfo.InvariantCulture), F(s.GcPauseMs, "F0"), s.Collections.ToString(CultureInfo.InvariantCulture))
                : ("-", "-", "-", "-", "-");
            var brokerCell = byBroker ? $"{r.Broker,-10} " : "";
            Console.WriteLine($"{brokerCell}{r.Server,-8} {F(f.Offered, "F0"),10} {F(f.Achieved, "F0"),11} {F(f.P50Ms, "F2"),8} {F(f.P95Ms, "F2"),8} {F(f.P99Ms, "F2"),8} {F(f.MaxMs),8} {f.Lost,8} {f.Wrong,6} {stored,9} {lag,8} {dropped,8} {paused,7} {collections,4} {F(r.ServerCpuSeconds),10} {F(r.ServerPeakMb, "F0"),7} {F(r.BrokerCpuSeconds),10} {F(r.BrokerPeakMb, "F0"),7} {F(r.BrokerMb, "F0"),7} {F(r.GeneratorCpuSeconds),10} {F(r.GeneratorPeakMb, "F0"),7}");
        }
        if (o.Rounds > 1)
        {
            Console.WriteLine($"over {o.Rounds} rounds, servers measured in turn (median · worst):");
            foreach (var m in Summarize(results))
            {
                Console.WriteLine($"{(byBroker ? $"{m.Broker,-10} " : "")}{m.Server,-8} p50 ms {F(m.P50MsMedian, "F2")}  p99 ms {F(m.P99MsMedian, "F2")} · {F(m.P99MsWorst, "F2")}  max ms {F(m.MaxMsWorst)}  achieved/s {F(m.AchievedPerSecondMedian, "F0")}  lost {m.Lost}  wrong {m.Wrong}");
            }
        }
    }

    /// <summary>One server's results over the rounds of a run.</summary>
    sealed record Summary(string Broker, string Server, int Rounds, double AchievedPerSecondMedian, double P50MsMedian, double P99MsMedian, double P99MsWorst,
        double MaxMsWorst, long Lost, long Wrong);

    static List<Summary> Summarize(List<Result> results) =>
        results.GroupBy(r => (r.Broker, r.Server)).Select(g => new Summary(g.Key.Broker, g.Key.Server, g.Count(),
            Median(g.Select(r => r.Figures.Achieved)), Median(g.Select(r => r.Figures.P50Ms)), Median(g.Select(r => r.Figures.P99Ms)),
            g.Max(r => r.Figures.P99Ms), g.Max(r => r.Figures.MaxMs), g.Sum(r => r.Figures.Lost), g.Sum(r => r.Figures.Wrong))).ToList();

    static double Median(IEnumerable<double> values)
    {
        var sorted = values.Order().ToArray();
        var middle = sorted.Length / 2;
        return sorted.Length % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
    }

    static (string File, List<string> Args) Self(params string[] args)
    {
        var path = Environment.ProcessPath ?? "dotnet";
        return Path.GetFileNameWithoutExtension(path) == "dotnet"
            ? ("dotnet", [Path.Combine(AppContext.BaseDirectory, "Nightlight.dll"), .. args])
            : (path, [.. args]);
    }

    static int FreePort()
    {
        using var listener = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        listener.Start();
        return ((System.Net.IPEndPoint)listener.LocalEndpoint).Port;
    }

    /// <summary>
    /// <c>nightlight broker</c>, or with <paramref name="withServer"/> <c>nightlight up --no-device</c>: the broker and
    /// our server in one process (linked in memory unless the environment sets <c>NIGHTLIGHT_Server__InProcess=false</c>).
    /// </summary>
    async Task<(ChildProcess Process, int Port, int HttpPort)?> StartBrokerAsync(bool withServer)
    {
        var port = FreePort();
        var mqttPort = port.ToString(CultureInfo.InvariantCulture);
        var httpPortNumber = FreePort();
        var httpPort = httpPortNumber.ToString(CultureInfo.InvariantCulture);
        // No per-client publish limit: the baseline servers answer thousands of readings a second on one connection.
        var (file, args) = withServer
            ? Self("up", "--no-device", "--mqtt-port", mqttPort, "--http-port", httpPort, "--quiet", "--no-status",
                "--threshold", options.Value.Threshold.ToString(CultureInfo.InvariantCulture), "--data", Path.Combine(_dataRoot, Guid.NewGuid().ToString("N")))
            : Self("broker", "--mqtt-port", mqttPort, "--http-port", httpPort, "--max-publish-rate", "0");
        var process = ChildProcess.Start(withServer ? "broker+server" : "broker", file, args,
            withServer ? new Dictionary<string, string?>
            {
                ["NIGHTLIGHT_Broker__MaxPublishRate"] = "0",
                ["NIGHTLIGHT_Rules__Default__Answer"] = options.Value.Answer,
            } : null);
        await process.WaitForAsync(withServer ? "Server link to the broker" : "MQTT broker listening", TimeSpan.FromSeconds(60));
        Progress($"embedded broker{(withServer ? " with our server in its process" : "")} (pid {process.Pid}) on port {port}");
        return (process, port, httpPortNumber);
    }

    /// <summary>Mosquitto (Debian <c>mosquitto</c>) on a free loopback port, as a baseline broker the bench can read /proc of.</summary>
    static async Task<(ChildProcess Process, int Port, int HttpPort)?> StartMosquittoAsync()
    {
        var mosquitto = new[] { "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/usr/bin/mosquitto" }.FirstOrDefault(File.Exists)
            ?? throw new InvalidOperationException("Bench:Broker mosquitto: mosquitto is not installed (Debian package mosquitto)");
        var port = FreePort();
        var directory = Path.Combine(_dataRoot, "mosquitto-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(directory);
        var config = Path.Combine(directory, "mosquitto.conf");
        // As the embedded broker runs here: loopback, anonymous, nothing persisted, no per-client queue limit to hit.
        await File.WriteAllLinesAsync(config, [$"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false", "max_queued_messages 0",
            "log_dest stderr", $"user {Environment.UserName}"]);
        var process = ChildProcess.Start("mosquitto", mosquitto, ["-c", config]);
        await process.WaitForAsync(" running", TimeSpan.FromSeconds(30));
        Progress($"mosquitto (pid {process.Pid}) on port {port}");
        return (process, port, 0);
    }

    /// <summary><see cref="BenchOptions.Idle"/>: idle connections to each broker in turn, then a table and the JSON.</summary>
    async Task RunIdleAsync(BenchOptions o, CancellationToken stoppingToken)
    {
        var brokers = o.Broker.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (brokers.Any(b => b is not ("embedded" or "mosquitto")))
        {
            throw new FormatException($"Bench:Idle: Bench:Broker '{o.Broker}' must list embedded and/or mosquitto");
        }
        IdleConnections.CheckOpenFilesLimit(o.Idle);
        var results = new List<IdleConnections.Figures>();
        foreach (var name in brokers)
        {
            var started = name == "mosquitto" ? await StartMosquittoAsync() : await StartBrokerAsync(withServer: false);
            await using var process = started!.Value.Process;
            Progress($"{name}: connecting {o.Idle} idle devices");
            var figures = await IdleConnections.MeasureAsync(name, started.Value.Port, process.Pid, o.Idle, Progress, stoppingToken);
            Progress($"{name}: {o.Idle} connected in {figures.ConnectSeconds:F1} s");
            results.Add(figures);
        }

        static string F(double v, string format = "F1") => double.IsNaN(v) ? "-" : v.ToString(format, CultureInfo.InvariantCulture);
        Console.WriteLine($"nightlight bench --idle: {o.Idle} idle device connections per broker, {Environment.ProcessorCount} cores");
        Console.WriteLine($"{"broker",-10} {"connections",11} {"connect s",10} {"connects/s",11} {"RSS before MB",14} {"RSS after MB",13} {"KB/conn",8} {"brk CPU s",10}");
        foreach (var r in results)
        {
            Console.WriteLine($"{r.Broker,-10} {r.Connections,11} {F(r.ConnectSeconds, "F2"),10} {F(r.ConnectsPerSecond, "F0"),11} {F(r.RssBeforeMb),14} {F(r.RssAfterMb),13} {F(r.KbPerConnection, "F2"),8} {F(r.CpuSeconds, "F2"),10}");
        }
        if (!string.IsNullOrEmpty(o.Json))
        {
            var document = new
            {
                mode = "idle",
                machine = new { cores = Environment.ProcessorCount, os = System.Runtime.InteropServices.RuntimeInformation.OSDescription, dotnet = Environment.Version.ToString() },
                connections = o.Idle,
                results = results.Select(r => new
                {
                    broker = r.Broker,
                    connections = r.Connections,
                    connectSeconds = r.ConnectSeconds,
                    connectsPerSecond = r.ConnectsPerSecond,
                    rssBeforeMb = NullIfNaN(r.RssBeforeMb),
                    rssAfterMb = NullIfNaN(r.RssAfterMb),
                    kbPerConnection = NullIfNaN(r.KbPerConnection),
                    brokerCpuSeconds = NullIfNaN(r.CpuSeconds),
                }),
            };
            await WriteJsonFileAsync(o.Json, document, stoppingToken);
        }
    }

    /// <summary>Starts a server under test; null for <c>external</c>: servers the caller runs (for example on a cluster).</summary>
    static async Task<ChildProcess?> StartServerAsync(string name, BrokerAddress broker, BenchOptions o, int httpPort)
    {
        if (name == "external")
        {
            Progress("external servers: none started; the caller runs them");
            return null;
        }
        var threshold = o.Threshold.ToString(CultureInfo.InvariantCulture);
        ChildProcess process;
        string ready;
        switch (name)
        {
            case "ours":
                var (file, args) = Self("server", "--broker", broker.ToString(), "--quiet", "--threshold", threshold,
                    "--data", Path.Combine(_dataRoot, Guid.NewGuid().ToString("N")), "--http-port", httpPort.ToString(CultureInfo.InvariantCulture), "--no-status");
                // A server identity for an authenticating broker; the secret goes in the environment, where `ps` does not show it.
                var environment = new Dictionary<string, string?>
                {
                    ["NIGHTLIGHT_Rules__Default__Answer"] = o.Answer,
                    ["NIGHTLIGHT_Server__StoredAcks"] = o.StoredAcks == "off" ? "false" : "true",
                };
                if (!string.IsNullOrEmpty(o.ServerUsername))
                {
                    environment["NIGHTLIGHT_Server__Username"] = o.ServerUsername;
                    environment["NIGHTLIGHT_Server__Password"] = o.ServerPassword;
                }
                process = ChildProcess.Start("server ours", file, args, environment);
                ready = "Server listening";
                break;
            case "naive":
                var (naiveFile, naiveArgs) = Self("bench-naive-server", "--broker", broker.ToString(), "--threshold", threshold);
                process = ChildProcess.Start("server naive", naiveFile, naiveArgs);
                ready = "naive server subscribed";
                break;
            default:
                // In the bench's own directory, which is deleted when the bench ends.
                Directory.CreateDirectory(_dataRoot);
                var script = Path.Combine(_dataRoot, "lesson-server.py");
                await File.WriteAllTextAsync(script, BaselineServers.LessonPython);
                process = ChildProcess.Start("server lesson", o.Python, [script, broker.Host, broker.Port.ToString(CultureInfo.InvariantCulture), threshold]);
                ready = "lesson server subscribed";
                break;
        }
        await process.WaitForAsync(ready, TimeSpan.FromSeconds(60));
        Progress($"{name} server running (pid {process.Pid})");
        return process;
    }
}
