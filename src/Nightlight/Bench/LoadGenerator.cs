using System.Collections.Concurrent;
using System.Diagnostics;
using Nightlight.Protocol;

namespace Nightlight.Cli.Bench;

/// <summary>
/// The benchmark's fleet: one MQTT connection per simulated device, readings sent at a fixed total rate, and each
/// command matched to the reading it answers. The server answers a device's readings in order, so the n-th
/// command of a device answers its n-th reading; readings switch between dark and light every
/// <c>flipEvery</c> readings, so a wrong answer shows. With <c>answerChanges</c> the server answers only readings that
/// change a device's LED (the first one it sees included), and only those wait for an answer here.
/// </summary>
sealed class LoadGenerator(int flipEvery = 1, bool answerChanges = false, bool numbered = false, bool storedAcks = false) : IAsyncDisposable
{
    readonly long _flipEvery = flipEvery;

    sealed class SimulatedDevice(string id)
    {
        public readonly string Id = id;
        public readonly string Topic = Topics.Telemetry(id);
        public readonly byte[] DarkPacket = BenchConnection.PublishPacket(Topics.Telemetry(id), Dark);
        public readonly byte[] BrightPacket = BenchConnection.PublishPacket(Topics.Telemetry(id), Bright);
        public BenchConnection? Connection;
        public readonly ConcurrentQueue<(long SentTicks, bool ExpectOn, bool Measured)> Pending = new();
        public long Sequence;
        // With answerChanges: the LED state the server last decided for this device, as far as its readings tell.
        public bool? LastDark;
    }

    static readonly byte[] Dark = TelemetryWriter.Write(100);
    static readonly byte[] Bright = TelemetryWriter.Write(500);

    readonly List<SimulatedDevice> _devices = [];
    long[] _latencies = [];
    long[] _recent = [];
    long _latencyCount;
    long _sent;
    long _sentMeasured;
    long _expected;
    long _expectedMeasured;
    long _received;
    long _receivedMeasured;
    long _wrong;
    long _storedAcks;
    long _unexpected;
    TaskCompletionSource _measuring = new();
    Timer? _keepAlive;

    public int Connected => _devices.Count(d => d.Connection?.IsConnected == true);

    /// <summary>Stored acknowledgements (<c>{id}/stored</c>) the devices received, with storedAcks.</summary>
    public long StoredAcks => Interlocked.Read(ref _storedAcks);

    /// <summary>Readings sent in the measured window so far.</summary>
    public long Sent => Interlocked.Read(ref _sentMeasured);

    /// <summary>Answers to readings of the measured window so far.</summary>
    public long Received => Interlocked.Read(ref _receivedMeasured);

    /// <summary>Connects <paramref name="count"/> devices, 64 at a time, and subscribes each to its commands.</summary>
    public Task ConnectAsync(string host, int port, int count, Action<int> progress, CancellationToken cancellationToken,
        IReadOnlyList<(string Id, string Secret)>? credentials = null) =>
        ConnectAsync([new BrokerAddress("mqtt", host, port)], count, progress, cancellationToken, credentials);

    /// <summary>The same, spreading the devices over the nodes of a cluster in turn.</summary>
    public async Task ConnectAsync(IReadOnlyList<BrokerAddress> brokers, int count, Action<int> progress, CancellationToken cancellationToken,
        IReadOnlyList<(string Id, string Secret)>? credentials = null)
    {
        using var gate = new SemaphoreSlim(64);
        var connected = 0;
        var tasks = Enumerable.Range(1, count).Select(async i =>
        {
            await gate.WaitAsync(cancellationToken);
            try
            {
                var id = credentials is null ? $"bench{i:D5}" : credentials[i - 1].Id;
                var device = new SimulatedDevice(id);
                var broker = brokers[(i - 1) % brokers.Count];
                device.Connection = await BenchConnection.OpenAsync(broker.Host, broker.Port, Topics.DeviceClientId(id),
                    credentials?[i - 1].Id, credentials?[i - 1].Secret, Topics.Commands(id), payload => OnCommand(device, payload), cancellationToken);
                if (storedAcks)
                {
                    await device.Connection.SubscribeAsync(Topics.Stored(id), cancellationToken);
                }
                lock (_devices)
                {
                    _devices.Add(device);
                }
                progress(Interlocked.Increment(ref connected));
            }
            finally
            {
                gate.Release();
            }
        });
        await Task.WhenAll(tasks);
        // Readings keep most connections busy, but a device that waits between two servers must still ping.
        _keepAlive ??= new Timer(_ =>
        {
            foreach (var device in _devices.ToArray())
            {
                device.Connection?.Ping();
            }
        }, null, TimeSpan.FromSeconds(30), TimeSpan.FromSeconds(30));
    }

    void OnCommand(SimulatedDevice device, ReadOnlySpan<byte> payload)
    {
        var now = Stopwatch.GetTimestamp();
        // One connection carries both the commands and, with storedAcks, {"epoch": E, "from": A, "seq": N}.
        if (storedAcks && payload.IndexOf("\"from\""u8) >= 0)
        {
            Interlocked.Increment(ref _storedAcks);
            return;
        }
        Interlocked.Increment(ref _received);
        if (!device.Pending.TryDequeue(out var reading))
        {
            Interlocked.Increment(ref _unexpected);
            return;
        }
        if (!CommandMessage.TryParse(payload, out var command, out _) || command.LedOn != reading.ExpectOn)
        {
            Interlocked.Increment(ref _wrong);
        }
        if (reading.Measured)
        {
            Interlocked.Increment(ref _receivedMeasured);
            var slot = Interlocked.Increment(ref _latencyCount) - 1;
            if (slot < _latencies.Length)
            {
                _latencies[slot] = now - reading.SentTicks;
            }
        }
    }

    /// <summary>
    /// Sends readings at <paramref name="rate"/> per second for <paramref name="warmup"/> and then, without a pause, for
    /// <paramref name="duration"/> more: only the readings of that second stretch are measured. A pause between the two
    /// (to let the warm-up's answers come in) made every run start its window from idle, and the first 100 ms of it
    /// then held up to 1% of the window's readings 20–100 ms, for any server: a burst from a standing start, not the
    /// steady load the window is meant to show. Answers are matched to readings per device in order, so answers to
    /// warm-up readings still in flight need no waiting for.
    /// </summary>
    public async Task SendAsync(double rate, TimeSpan warmup, TimeSpan duration, CancellationToken cancellationToken)
    {
        _latencies = new long[(long)(rate * duration.TotalSeconds * 1.2) + 1000];
        _latencyCount = 0;
        _measuring = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        // Several sender loops, each owning a slice of the devices, so one slow write does not stall the rest; one clock
        // tells them all when the warm-up ends.
        var clock = Stopwatch.StartNew();
        var loops = Math.Min(4, _devices.Count);
        var senders = Enumerable.Range(0, loops).Select(k => Task.Run(() => SendLoopAsync(
            _devices.Where((_, i) => i % loops == k).ToArray(), rate / loops, clock, warmup, warmup + duration, cancellationToken), cancellationToken));
        await Task.WhenAll(senders);
        _measuring.TrySetResult();
    }

    /// <summary>Completes when the readings sent start being measured (with no warm-up, at the first one).</summary>
    public Task Measuring => _measuring.Task;

    async Task SendLoopAsync(SimulatedDevice[] devices, double rate, Stopwatch clock, TimeSpan warmup, TimeSpan end, CancellationToken cancellationToken)
    {
        long sent = 0;
        var next = 0;
        while (clock.Elapsed < end && !cancellationToken.IsCancellationRequested)
        {
            var elapsed = clock.Elapsed;
            var measured = elapsed >= warmup;
            if (measured && !_measuring.Task.IsCompleted)
            {
                _measuring.TrySetResult();
            }
            var due = (long)(elapsed.TotalSeconds * rate);
            while (sent < due)
            {
                var device = devices[next];
                next = (next + 1) % devices.Length;
                var dark = (device.Sequence++ / _flipEvery & 1) == 0;
                var expectAnswer = !answerChanges || device.LastDark != dark;
                if (expectAnswer)
                {
                    device.LastDark = dark;
                    device.Pending.Enqueue((Stopwatch.GetTimestamp(), dark, measured));
                    Interlocked.Increment(ref _expected);
                    if (measured)
                    {
                        Interlocked.Increment(ref _expectedMeasured);
                    }
                }
                // A reading to a broken connection still counts as sent: its missing answer counts as lost.
                device.Connection?.TrySend(!numbered ? dark ? device.DarkPacket : device.BrightPacket
                    : BenchConnection.PublishPacket(device.Topic, TelemetryWriter.Write(dark ? 100 : 500, device.Sequence)));
                sent++;
                Interlocked.Increment(ref _sent);
                if (measured)
                {
                    Interlocked.Increment(ref _sentMeasured);
                }
            }
            await Task.Delay(1, cancellationToken);
        }
    }

    /// <summary>
    /// Forgets everything sent so far, between warm-up and measuring; with <paramref name="newServer"/> also the LED
    /// states, as a server that starts knows none.
    /// </summary>
    public void Reset(bool newServer = false)
    {
        foreach (var device in _devices)
        {
            device.Pending.Clear();
            if (newServer)
            {
                device.LastDark = null;
            }
        }
        _sent = _sentMeasured = _expected = _expectedMeasured = _received = _receivedMeasured = _wrong = _unexpected = 0;
        _latencyCount = 0;
    }

    /// <summary>Readings of the measured window that wait for an answer: all of them, or with answerChanges those that change a LED.</summary>
    public long Expected => Interlocked.Read(ref _expectedMeasured);

    /// <summary>Waits until every reading sent is answered or <paramref name="grace"/> passes.</summary>
    public async Task DrainAsync(TimeSpan grace)
    {
        var deadline = DateTime.UtcNow + grace;
        while (Interlocked.Read(ref _received) < Interlocked.Read(ref _expected) && DateTime.UtcNow < deadline)
        {
            await Task.Delay(50);
        }
    }

    /// <summary>Readings sent in the warm-up so far.</summary>
    public long WarmupSent => Interlocked.Read(ref _sent) - Interlocked.Read(ref _sentMeasured);

    /// <summary>Warm-up readings still waiting for their answer.</summary>
    public long WarmupUnanswered => Interlocked.Read(ref _expected) - Interlocked.Read(ref _expectedMeasured) -
        (Interlocked.Read(ref _received) - Interlocked.Read(ref _receivedMeasured));

    /// <summary>
    /// The 99th percentile, in milliseconds, of the answers measured since the count <paramref name="from"/> (which
    /// moves on to the count now): the progress line's latency for the second just gone. NaN when none came. An answer
    /// whose slot is taken but not yet filled reads as 0 here; the run's own figures are taken after the answers settle.
    /// </summary>
    public double RecentP99Ms(ref long from)
    {
        var to = (int)Math.Min(Interlocked.Read(ref _latencyCount), _latencies.Length);
        var start = (int)Math.Min(from, to);
        from = to;
        if (to == start)
        {
            return double.NaN;
        }
        // A second's latencies are 160 KB at 20,000 answers/s: a new array each second was a large-object allocation that
        // set off a collection of the generator's heap at the tick, pausing its devices by up to 20 ms (measured with
        // the runtime's GC events), which every server's latency then showed. One buffer serves every tick.
        var count = to - start;
        if (_recent.Length < count)
        {
            _recent = new long[Math.Max(count, _recent.Length * 2)];
        }
        var window = _recent.AsSpan(0, count);
        _latencies.AsSpan(start, count).CopyTo(window);
        window.Sort();
        return Percentile(window, 0.99);
    }

    /// <summary>The <paramref name="q"/> quantile of <paramref name="sorted"/> latencies (ticks), in milliseconds.</summary>
    static double Percentile(ReadOnlySpan<long> sorted, double q) =>
        sorted.IsEmpty ? double.NaN : sorted[Math.Min(sorted.Length - 1, (int)Math.Ceiling(q * sorted.Length) - 1)] * 1000.0 / Stopwatch.Frequency;

    public BenchFigures Figures(TimeSpan duration)
    {
        var count = (int)Math.Min(Interlocked.Read(ref _latencyCount), _latencies.Length);
        var sorted = _latencies.AsSpan(0, count).ToArray();
        Array.Sort(sorted);
        double Ms(double q) => Percentile(sorted, q);
        var sent = Interlocked.Read(ref _sentMeasured);
        var expected = Interlocked.Read(ref _expectedMeasured);
        var received = Interlocked.Read(ref _receivedMeasured);
        return new BenchFigures(sent / duration.TotalSeconds, received / duration.TotalSeconds, Ms(0.50), Ms(0.95), Ms(0.99),
            count == 0 ? double.NaN : sorted[^1] * 1000.0 / Stopwatch.Frequency, sent, expected, received, expected - received, Interlocked.Read(ref _wrong));
    }

    public ValueTask DisposeAsync()
    {
        _keepAlive?.Dispose();
        foreach (var device in _devices)
        {
            device.Connection?.Close();
        }
        return ValueTask.CompletedTask;
    }
}

/// <summary>
/// What one benchmark run measured; rates are per second over the measured window. <c>Expected</c> is how many of the
/// readings sent wait for an answer (all, unless the server answers only changes); <c>Lost</c> is those never answered.
/// </summary>
sealed record BenchFigures(double Offered, double Achieved, double P50Ms, double P95Ms, double P99Ms, double MaxMs, long Sent, long Expected, long Answered, long Lost, long Wrong);
