using System.Threading.Channels;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Nightlight.Server.Storage;

/// <summary>
/// The store stage: readings, commands and device changes queue here and are written in batches, one transaction
/// each, by one loop. The message path only does a non-blocking <see cref="TryWrite(StoredReading)"/>, so a slow disk
/// never delays a command; when the queue is full new readings are dropped, counted and logged.
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
    DateTimeOffset _lastDropLog;

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
            FullMode = BoundedChannelFullMode.DropWrite,
        });
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

    /// <summary>Completes once the tables exist and the device registry holds what an earlier run stored.</summary>
    public Task Loaded => _loaded.Task;

    public override async Task StartAsync(CancellationToken cancellationToken)
    {
        // Before the server starts: its registry and rules should see the devices an earlier run knew.
        await _store.InitializeAsync(cancellationToken);
        _devices.Load(await _store.DevicesAsync(cancellationToken));
        _logger.LogInformation("Storing telemetry in {Provider} at {Location}", _store.Provider, _store.Location);
        _loaded.TrySetResult();
        await base.StartAsync(cancellationToken);
    }

    public void TryWrite(StoredReading reading) => Enqueue(reading);

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
    /// reading only when it is stored. After a lost batch, or when the queue is full, it never runs: the reading stays
    /// unacknowledged and the broker hands it out again once this server's connection closes.
    /// </summary>
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
                    break;
                }
                catch (Exception e) when (attempt < 3 && !stoppingToken.IsCancellationRequested)
                {
                    _logger.LogWarning("Storage write of {Count} readings failed, retrying: {Error}", readings.Count, e.Message);
                    Thread.Sleep(TimeSpan.FromSeconds(attempt));
                }
                catch (Exception e)
                {
                    _logger.LogError("Storage write of {Count} readings failed, batch lost: {Error}", readings.Count, e.Message);
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
