using System.Collections.Concurrent;
using System.Diagnostics.Metrics;

namespace Nightlight.Server;

/// <summary>Counters of the server's message path, exported under the meter <c>Nightlight.Server</c>.</summary>
public sealed class ServerMetrics : IDisposable
{
    public const string MeterName = "Nightlight.Server";

    readonly Meter _meter;
    readonly Counter<long> _received;
    readonly Counter<long> _rejected;
    readonly Counter<long> _dropped;
    long _droppedTotal;
    readonly Counter<long> _commandsSent;
    readonly Counter<long> _commandsFailed;
    readonly Counter<long> _stored;
    readonly Counter<long> _storeDropped;
    readonly Counter<long> _storeWriteFailed;
    long _receivedTotal;
    long _rejectedTotal;
    long _commandsSentTotal;
    long _commandsFailedTotal;
    // For the terminal status line: when each device was last heard, and the last command sent.
    readonly ConcurrentDictionary<string, long> _lastHeard = new(StringComparer.Ordinal);
    // The last command sent, kept as fields and made a record only when read: a record per command would be garbage
    // at thousands of commands a second.
    readonly Lock _lastCommandGate = new();
    string? _lastCommandDevice;
    string? _lastCommandText;
    long _lastCommandAt;

    public ServerMetrics(IMeterFactory? meterFactory = null)
    {
        _meter = meterFactory?.Create(MeterName) ?? new Meter(MeterName);
        _received = _meter.CreateCounter<long>("nightlight.telemetry.received", "{message}", "Telemetry messages accepted");
        _rejected = _meter.CreateCounter<long>("nightlight.telemetry.rejected", "{message}", "Telemetry messages rejected as malformed");
        _dropped = _meter.CreateCounter<long>("nightlight.telemetry.dropped", "{message}", "Readings handed over in process and dropped because the server's queue was full");
        _commandsSent = _meter.CreateCounter<long>("nightlight.commands.sent", "{command}", "Commands published");
        _commandsFailed = _meter.CreateCounter<long>("nightlight.commands.failed", "{command}", "Commands that could not be published");
        _stored = _meter.CreateCounter<long>("nightlight.readings.stored", "{reading}", "Readings written to the store");
        _storeWriteFailed = _meter.CreateCounter<long>("nightlight.store.write_failures", "{batch}", "Store batches whose write failed and is tried again");
        _storeDropped = _meter.CreateCounter<long>("nightlight.store.dropped", "{write}", "Readings, command states and device rows not stored because the store's queue was full");
    }

    public long Received => Interlocked.Read(ref _receivedTotal);
    public long Rejected => Interlocked.Read(ref _rejectedTotal);
    public long CommandsSent => Interlocked.Read(ref _commandsSentTotal);
    public long CommandsFailed => Interlocked.Read(ref _commandsFailedTotal);

    /// <summary>The last command sent, or null before the first.</summary>
    public SentCommand? LastCommand
    {
        get
        {
            lock (_lastCommandGate)
            {
                return _lastCommandDevice is null ? null : new SentCommand(_lastCommandDevice, _lastCommandText!, _lastCommandAt);
            }
        }
    }

    public void TelemetryReceived(string? deviceId = null)
    {
        Interlocked.Increment(ref _receivedTotal);
        _received.Add(1);
        if (deviceId is not null)
        {
            _lastHeard[deviceId] = Environment.TickCount64;
        }
    }

    /// <summary>Devices heard within <paramref name="window"/>; forgets the others, so made-up ids cannot pile up.</summary>
    public int DevicesHeardWithin(TimeSpan window)
    {
        var since = Environment.TickCount64 - (long)window.TotalMilliseconds;
        var count = 0;
        foreach (var (id, at) in _lastHeard)
        {
            if (at >= since)
            {
                count++;
            }
            else
            {
                _lastHeard.TryRemove(new KeyValuePair<string, long>(id, at));
            }
        }
        return count;
    }

    /// <summary>Readings dropped by the in-process link on a full queue.</summary>
    public long Dropped => Interlocked.Read(ref _droppedTotal);

    /// <summary>A reading dropped on a full queue; returns the total so far.</summary>
    public long TelemetryDropped()
    {
        _dropped.Add(1);
        return Interlocked.Increment(ref _droppedTotal);
    }

    public void TelemetryRejected()
    {
        Interlocked.Increment(ref _rejectedTotal);
        _rejected.Add(1);
    }

    public void CommandSent(string? deviceId = null, string? command = null)
    {
        Interlocked.Increment(ref _commandsSentTotal);
        _commandsSent.Add(1);
        if (deviceId is not null && command is not null)
        {
            lock (_lastCommandGate)
            {
                _lastCommandDevice = deviceId;
                _lastCommandText = command;
                _lastCommandAt = Environment.TickCount64;
            }
        }
    }

    public void CommandFailed()
    {
        Interlocked.Increment(ref _commandsFailedTotal);
        _commandsFailed.Add(1);
    }

    public void ReadingsStored(long count) => _stored.Add(count);

    public void StoreDropped() => _storeDropped.Add(1);

    /// <summary>Counts a batch whose write failed (it is tried again).</summary>
    public void StoreWriteFailed() => _storeWriteFailed.Add(1);

    /// <summary>Publishes the store's queue length and whether its writes are failing, read at each scrape.</summary>
    public void ObserveStore(Func<int> waiting, Func<int> failing)
    {
        _meter.CreateObservableGauge("nightlight.store.waiting", waiting, "{write}", "Readings, command states and device rows waiting to be written");
        _meter.CreateObservableGauge("nightlight.store.failing", failing, null, "1 while the store's writes fail, else 0");
    }

    /// <summary>Publishes the readings lost on the way (gaps in the devices' seqs, over every device), read at each scrape.</summary>
    public void ObserveMissing(Func<long> missing) =>
        _meter.CreateObservableGauge("nightlight.readings.missing", missing, "{reading}",
            "Readings lost on the way: seqs not stored between the first and last stored seq of each device's epoch");

    public void Dispose() => _meter.Dispose();
}

/// <summary>A command the server sent: to which device, its payload, and when (<see cref="Environment.TickCount64"/>).</summary>
public sealed record SentCommand(string DeviceId, string Command, long At);
