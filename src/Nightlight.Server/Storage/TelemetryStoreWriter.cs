using System.Threading.Channels;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Nightlight.Server.Storage;

/// <summary>
/// The store stage: readings, commands and device changes queue here and are written in batches, one transaction
/// each, by one loop. A batch that fails is tried again until the store takes it (an outage holds readings, never
/// drops them); meanwhile the queue fills and <see cref="WriteAsync(StoredReading)"/> makes the message path wait for room.
/// </summary>
public sealed class TelemetryStoreWriter : BackgroundService
{
    readonly ITelemetryStore _store;
    readonly DeviceRegistry _devices;
    readonly StorageOptions _options;
    readonly ServerMetrics _metrics;
    readonly ILogger<TelemetryStoreWriter> _logger;
    readonly Channel<object> _queue;
    readonly TaskCompletionSource _loaded = new(TaskCreationOptions.RunContinuationsAsynchronously);
    long _dropped;
    long _stored;
    long _failedWrites;
    DateTimeOffset _lastDropLog;
    volatile string? _failure;

    public TelemetryStoreWriter(ITelemetryStore store, DeviceRegistry devices, IOptions<StorageOptions> options, ServerMetrics metrics,
        ILogger<TelemetryStoreWriter> logger)
    {
        _store = store;
        _devices = devices;
        _options = options.Value;
        _metrics = metrics;
        _logger = logger;
        _queue = Channel.CreateBounded<object>(new BoundedChannelOptions(_options.QueueCapacity)
        {
            SingleReader = true,
            // Wait, not DropWrite: a dropping channel's TryWrite reports success for the item it drops.
            FullMode = BoundedChannelFullMode.Wait,
        });
        metrics.ObserveStore(() => Pending, () => Failing ? 1 : 0);
        metrics.ObserveMissing(new MissingReadings(store, logger).Read);
    }

    /// <summary>Readings written so far (duplicates by device, epoch and seq not counted).</summary>
    public long Stored => Interlocked.Read(ref _stored);

    /// <summary>Writes (readings, command states, device rows) dropped because the queue was full.</summary>
    public long Dropped => Interlocked.Read(ref _dropped);

    /// <summary>
    /// Raised on the writer's thread after each committed batch with its readings in arrival order (duplicates the store
    /// skipped included: they are stored too). Handlers must read them before returning, and return at once.
    /// </summary>
    public event Action<IReadOnlyList<StoredReading>>? BatchStored;

    /// <summary>Items waiting to be written.</summary>
    public int Pending => _queue.Reader.Count;

    /// <summary>Batches whose write failed (each is tried again until it succeeds).</summary>
    public long FailedWrites => Interlocked.Read(ref _failedWrites);

    /// <summary>True from a failed write until a write succeeds again.</summary>
    public bool Failing => _failure is not null;

    /// <summary>What the store's integrity check found wrong at start (see <see cref="ITelemetryStore.CheckIntegrityAsync"/>), or null.</summary>
    public string? Damage { get; private set; }

    /// <summary>The error of the last failed write while <see cref="Failing"/>, otherwise null.</summary>
    public string? Failure => _failure;

    /// <summary>Completes once the tables exist and the device registry holds what an earlier run stored.</summary>
    public Task Loaded => _loaded.Task;

    public override async Task StartAsync(CancellationToken cancellationToken)
    {
        // Before the server starts: its registry and rules should see the devices an earlier run knew.
        try
        {
            await _store.InitializeAsync(cancellationToken);
            _devices.Load(await _store.DevicesAsync(cancellationToken));
        }
        catch (Exception e) when (!cancellationToken.IsCancellationRequested)
        {
            throw new InvalidOperationException(_store.Provider == "sqlite"
                ? $"cannot open the SQLite database {_store.Location}: {e.Message}. Move the file aside (a new one is made) or restore it from a backup."
                : $"cannot open the {_store.Provider} store at {_store.Location}: {e.Message}. Check Storage:ConnectionString and that the database server runs.", e);
        }
        _logger.LogInformation("Storing telemetry in {Provider} at {Location}", _store.Provider, _store.Location);
        Damage = await _store.CheckIntegrityAsync(cancellationToken);
        if (Damage is not null)
        {
            _logger.LogError("The {Provider} database {Location} is damaged; serving what can be read, and writes may fail until it is restored from a backup: {Damage}",
                _store.Provider, _store.Location, Damage);
        }
        _loaded.TrySetResult();
        await base.StartAsync(cancellationToken);
    }

    /// <summary>Queues a reading, waiting for room while the store is behind or down (the caller's ingest slows down).</summary>
    public ValueTask WriteAsync(StoredReading reading) =>
        _queue.Writer.TryWrite(reading) ? ValueTask.CompletedTask : WaitToWriteAsync(reading);

    async ValueTask WaitToWriteAsync(object item)
    {
        try
        {
            await _queue.Writer.WriteAsync(item);
        }
        catch (ChannelClosedException)
        {
            Enqueue(item);
        }
    }

    /// <summary>Queues a command's new state.</summary>
    public void Write(CommandRecord command) => Enqueue(command);

    /// <summary>Queues a device whose presence or LED changed without a reading.</summary>
    public void DeviceChanged(string deviceId) => Enqueue(new DeviceChange(deviceId));

    void Enqueue(object item)
    {
        if (_queue.Writer.TryWrite(item))
        {
            return;
        }
        // Full (or completed at shutdown): nothing waits on the message path, so the item is counted and logged.
        Interlocked.Increment(ref _dropped);
        _metrics.StoreDropped();
        var now = DateTimeOffset.UtcNow;
        if (now - _lastDropLog > TimeSpan.FromSeconds(10))
        {
            _lastDropLog = now;
            _logger.LogWarning("Storage is behind: {Dropped} writes (readings, command states, device rows) dropped so far (queue of {Capacity} full)",
                Dropped, _options.QueueCapacity);
        }
    }

    sealed record DeviceChange(string Id);

    /// <summary>
    /// Runs <paramref name="callback"/> once everything queued before it is written, so an ingest path can acknowledge a
    /// reading only when it is stored. It waits for room like <see cref="WriteAsync(StoredReading)"/>; at shutdown, with
    /// the queue closed, it never runs: the reading stays unacknowledged and the broker hands it out again.
    /// </summary>
    public ValueTask AfterWriteAsync(Action callback) =>
        _queue.Writer.TryWrite(callback) ? ValueTask.CompletedTask : WaitForCallbackRoomAsync(callback);

    async ValueTask WaitForCallbackRoomAsync(Action callback)
    {
        try
        {
            await _queue.Writer.WriteAsync(callback);
        }
        catch (ChannelClosedException)
        {
        }
    }

    /// <summary>As <see cref="AfterWriteAsync"/>, never waiting: when the queue is full the callback does not run.</summary>
    public void AfterWrite(Action callback) => _queue.Writer.TryWrite(callback);

    /// <summary>
    /// The write loop runs on a thread of its own. A batch is one synchronous SQLite transaction of tens of
    /// milliseconds: on the thread pool (two workers on two cores) it held a worker the message path needed, and
    /// after the gathering delay it even ran on the timer thread, holding up every timer in the process.
    /// </summary>
    protected override Task ExecuteAsync(CancellationToken stoppingToken) =>
        Task.Factory.StartNew(() => WriteLoop(stoppingToken), CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);

    void WriteLoop(CancellationToken stoppingToken)
    {
        Thread.CurrentThread.Name = "Nightlight store writer";
        var readings = new List<StoredReading>(_options.BatchSize);
        var commands = new Dictionary<string, CommandRecord>(StringComparer.Ordinal);
        var touched = new HashSet<string>(StringComparer.Ordinal);
        var written = new List<Action>();
        var flushInterval = _options.FlushInterval is "0" or "" ? TimeSpan.Zero : Protocol.Durations.Parse(_options.FlushInterval, "Storage:FlushInterval");

        void Drain()
        {
            while (readings.Count + commands.Count < _options.BatchSize && _queue.Reader.TryRead(out var item))
            {
                switch (item)
                {
                    case StoredReading r:
                        readings.Add(r);
                        touched.Add(r.DeviceId);
                        break;
                    case CommandRecord c:
                        commands[c.Id] = c;
                        touched.Add(c.DeviceId);
                        break;
                    case DeviceChange d:
                        touched.Add(d.Id);
                        break;
                    case Action callback:
                        written.Add(callback);
                        break;
                }
            }
        }

        // Drains whatever is queued at shutdown too: the reader completes only after StopAsync completes the writer.
        while (_queue.Reader.WaitToReadAsync(CancellationToken.None).AsTask().GetAwaiter().GetResult())
        {
            Drain();
            if (flushInterval > TimeSpan.Zero && readings.Count + commands.Count < _options.BatchSize && !stoppingToken.IsCancellationRequested)
            {
                // Gather: one transaction for what arrives in the next moments instead of one per handful.
                Thread.Sleep(flushInterval);
                Drain();
            }
            var devices = touched.Select(_devices.Get).OfType<DeviceRecord>().ToList();
            var stored = false;
            for (var attempt = 1; ; attempt++)
            {
                try
                {
                    var inserted = _store.WriteAsync(readings, commands.Values.ToList(), devices, CancellationToken.None).GetAwaiter().GetResult();
                    Interlocked.Add(ref _stored, inserted);
                    _metrics.ReadingsStored(inserted);
                    stored = true;
                    if (_failure is not null)
                    {
                        _failure = null;
                        _logger.LogWarning("Storage writes work again after {Attempts} attempts; {Pending} writes still queued", attempt, Pending);
                    }
                    break;
                }
                catch (Exception e) when (!stoppingToken.IsCancellationRequested || attempt < 3)
                {
                    // Tried until the store is back: the readings wait here, the queue behind them fills, and the
                    // message path waits for room (see WriteAsync), which slows the broker down instead of losing data.
                    Interlocked.Increment(ref _failedWrites);
                    _metrics.StoreWriteFailed();
                    if (_failure is null || attempt % 30 == 0)
                    {
                        _logger.LogError("Storage write of {Count} readings failed (attempt {Attempt}); holding them and {Pending} more queued until the store is back: {Error}",
                            readings.Count, attempt, Pending, e.Message);
                    }
                    _failure = e.Message;
                    Thread.Sleep(RetryDelay(attempt));
                }
                catch (Exception e)
                {
                    Interlocked.Increment(ref _failedWrites);
                    Interlocked.Add(ref _dropped, readings.Count);
                    _metrics.StoreWriteFailed();
                    _logger.LogError("Storage write of {Count} readings failed while stopping; they are not stored (their devices' outboxes or the broker's session still hold unacknowledged ones): {Error}",
                        readings.Count, e.Message);
                    break;
                }
            }
            if (stored)
            {
                if (BatchStored is { } batchStored && readings.Count > 0)
                {
                    batchStored(readings);
                }
                foreach (var callback in written)
                {
                    callback();
                }
            }
            written.Clear();
            readings.Clear();
            commands.Clear();
            touched.Clear();
        }
    }

    /// <summary>Waits between tries of a failed batch: 0.25 s doubling to 4 s, so a store that comes back is used within seconds.</summary>
    static TimeSpan RetryDelay(int attempt) => TimeSpan.FromMilliseconds(Math.Min(4000, 250 * Math.Pow(2, Math.Min(attempt - 1, 4))));

    public override async Task StopAsync(CancellationToken cancellationToken)
    {
        _queue.Writer.TryComplete();
        await base.StopAsync(cancellationToken);
        // The last batch is written; ExecuteAsync returned because the queue is empty and complete.
        if (ExecuteTask is { } task)
        {
            await task.WaitAsync(cancellationToken);
        }
    }
}
