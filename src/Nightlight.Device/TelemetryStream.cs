using Microsoft.Extensions.Logging;
using System.Buffers;
using MQTTnet.Protocol;
using Nightlight.Mqtt;
using Nightlight.Protocol;

namespace Nightlight.Device;

/// <summary>What a telemetry stream does with readings taken while the device cannot reach its broker.</summary>
public enum OfflinePolicy
{
    /// <summary>Fire and forget, the lesson's behaviour: a reading taken offline is dropped (and counted).</summary>
    Drop,

    /// <summary>Keep only the newest reading, in memory, and send it on reconnect (a thermostat's current temperature).</summary>
    Latest,

    /// <summary>Keep every reading in the durable on-disk <see cref="Outbox"/> and replay them in order on reconnect.</summary>
    All,
}

/// <summary>How one telemetry stream is sent.</summary>
public sealed class TelemetryStreamOptions
{
    /// <summary>Topic the readings go to, for example <c>nightlight1/telemetry</c>.</summary>
    public string Topic { get; set; } = "";

    /// <summary>Offline policy. Default <see cref="OfflinePolicy.Drop"/>.</summary>
    public OfflinePolicy Offline { get; set; } = OfflinePolicy.Drop;

    /// <summary>
    /// QoS of the publishes. With <see cref="OfflinePolicy.All"/> use 1 or 2: a reading leaves the outbox once the
    /// broker acknowledged it; with QoS 0 it leaves once written to the socket, and a link that dies silently loses
    /// what was in flight.
    /// </summary>
    public MqttQualityOfServiceLevel Qos { get; set; } = MqttQualityOfServiceLevel.AtMostOnce;

    /// <summary>Publishes in flight at once while replaying a backlog (QoS 1 and 2 wait for the broker; QoS 0 for the socket). Default 100.</summary>
    public int ReplayWindow { get; set; } = 100;
}

/// <summary>
/// One telemetry stream with its offline policy: readings go in with <see cref="Enqueue"/>, a sender loop
/// (<see cref="RunAsync"/>) publishes them in order whenever the connection is up. Does not own the connection;
/// owns nothing else but is given the outbox it drains (disposed by whoever opened it).
/// </summary>
public sealed class TelemetryStream
{
    readonly TelemetryStreamOptions _options;
    readonly ManagedMqttConnection _connection;
    readonly Outbox? _outbox;
    readonly ILogger _logger;
    readonly SemaphoreSlim _wake = new(0);
    readonly Lock _gate = new();
    byte[]? _latest;
    long _sent;
    long _dropped;
    long _droppedThisOutage;
    // Under OfflinePolicy.All, once the server has said it acknowledges stored readings (guarded by _gate):
    bool _storeAcknowledges;
    List<StoredAck> _newAcks = [];
    // Runs of seqs the store has, merged (touched by the sender loop only): a reading at the outbox's front leaves
    // when any of them covers it, so a gap the device itself left (a damaged record) does not hold up the rest.
    readonly List<StoredAck> _storedRuns = [];
    int _unconfirmed;
    DateTimeOffset _lastStoreProgress;

    /// <summary>
    /// How long unconfirmed readings wait for a stored acknowledgement (<c>{id}/stored</c>) before they are sent again
    /// from the outbox's front. Default 10 s.
    /// </summary>
    public TimeSpan ResendAfter { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>Readings sent but not yet acknowledged by the store, at most; more wait for acknowledgements or a resend.</summary>
    public const int MaxUnconfirmed = 8192;

    /// <summary>Creates a stream; <paramref name="outbox"/> is required for <see cref="OfflinePolicy.All"/>.</summary>
    public TelemetryStream(TelemetryStreamOptions options, ManagedMqttConnection connection, Outbox? outbox, ILogger logger)
    {
        if (options.Offline == OfflinePolicy.All && outbox is null)
        {
            throw new ArgumentException("The 'all' offline policy needs an outbox.", nameof(outbox));
        }
        _options = options;
        _connection = connection;
        _outbox = outbox;
        _logger = logger;
        if (options.Offline == OfflinePolicy.All && File.Exists(StoreAcknowledgesMarker))
        {
            // Learned in an earlier run: a backlog replayed before the server is subscribed again must not be forgotten
            // on the broker's word.
            _storeAcknowledges = true;
            _lastStoreProgress = DateTimeOffset.UtcNow;
            _logger.LogInformation("{Topic}: the server acknowledged stored readings before ({Marker}); keeping each one until it is stored",
                options.Topic, StoreAcknowledgesMarker);
        }
    }

    /// <summary>
    /// The file in the outbox's directory that remembers, across restarts, that the server acknowledges stored readings.
    /// Delete it (device stopped) to go back to the broker's acknowledgement, for a server that sends none.
    /// </summary>
    public string StoreAcknowledgesMarker => Path.Combine(_outbox?.Directory ?? "", MarkerFileName);

    /// <summary>The name of <see cref="StoreAcknowledgesMarker"/>.</summary>
    public const string MarkerFileName = "server-acknowledges-stored";

    /// <summary>The policy of this stream.</summary>
    public OfflinePolicy Policy => _options.Offline;

    /// <summary>Readings the broker accepted (QoS 1/2) or that were written to the connection (QoS 0).</summary>
    public long Sent => Interlocked.Read(ref _sent);

    /// <summary>Readings dropped: taken offline under <see cref="OfflinePolicy.Drop"/>, replaced under
    /// <see cref="OfflinePolicy.Latest"/>, or pushed out of a full outbox under <see cref="OfflinePolicy.All"/>.</summary>
    public long Dropped => Interlocked.Read(ref _dropped) + (_outbox?.Dropped ?? 0);

    /// <summary>Readings waiting to be sent.</summary>
    public long Queued
    {
        get
        {
            lock (_gate)
            {
                return (_outbox?.Count ?? 0) + (_latest is null ? 0 : 1);
            }
        }
    }

    /// <summary>True once a stored acknowledgement came: readings then leave the outbox only when the store has them.</summary>
    public bool StoreAcknowledges
    {
        get
        {
            lock (_gate)
            {
                return _storeAcknowledges;
            }
        }
    }

    /// <summary>
    /// Wakes the sender loop: the connection came (back) up. Readings the store has not confirmed are sent again, as
    /// their copies may have been lost with the connection.
    /// </summary>
    public void Wake()
    {
        lock (_gate)
        {
            _unconfirmed = 0;
        }
        _wake.Release();
    }

    /// <summary>
    /// Takes a <c>{id}/stored</c> payload: the readings at the outbox's front of its epoch, from its <c>from</c> to its
    /// <c>seq</c>, are stored and leave the outbox; a front reading before <c>from</c> waits to be sent again. From the first one on, readings stay in the outbox until such an acknowledgement covers them.
    /// </summary>
    public void OnStored(ReadOnlySequence<byte> payload)
    {
        if (_options.Offline != OfflinePolicy.All)
        {
            return;
        }
        if (!StoredAck.TryParse(payload.IsSingleSegment ? payload.FirstSpan : payload.ToArray(), out var ack, out var error))
        {
            _logger.LogWarning("{Topic}: stored acknowledgement ignored: {Error}", _options.Topic, error);
            return;
        }
        lock (_gate)
        {
            if (!_storeAcknowledges)
            {
                _storeAcknowledges = true;
                _lastStoreProgress = DateTimeOffset.UtcNow;
                _logger.LogInformation("{Topic}: the server acknowledges stored readings; keeping each one until it is stored", _options.Topic);
                RememberStoreAcknowledges();
            }
            _newAcks.Add(ack);
        }
        _wake.Release();
    }

    void RememberStoreAcknowledges()
    {
        try
        {
            File.WriteAllBytes(StoreAcknowledgesMarker, []);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            _logger.LogWarning("{Topic}: could not write {Marker} ({Error}); after a restart the broker's acknowledgement counts again until the server's next one",
                _options.Topic, StoreAcknowledgesMarker, e.Message);
        }
    }

    /// <summary>
    /// Hands one reading to the stream. Under <see cref="OfflinePolicy.Drop"/> it is published now or dropped; under
    /// the other policies it is kept and the sender loop publishes it.
    /// </summary>
    /// <returns>False when the reading was dropped.</returns>
    public async ValueTask<bool> Enqueue(byte[] payload, CancellationToken cancellationToken)
    {
        switch (_options.Offline)
        {
            case OfflinePolicy.Drop:
                if (await _connection.TryPublishAsync(_options.Topic, payload, _options.Qos, cancellationToken: cancellationToken).ConfigureAwait(false))
                {
                    Interlocked.Increment(ref _sent);
                    if (Interlocked.Exchange(ref _droppedThisOutage, 0) is var lost and > 0)
                    {
                        _logger.LogWarning("{Topic}: back online; {Lost} readings taken offline were dropped (offline policy 'drop')", _options.Topic, lost);
                    }
                    return true;
                }
                Interlocked.Increment(ref _dropped);
                if (Interlocked.Increment(ref _droppedThisOutage) == 1)
                {
                    _logger.LogWarning("{Topic}: offline; dropping readings until the connection is back (offline policy 'drop')", _options.Topic);
                }
                return false;
            case OfflinePolicy.Latest:
                lock (_gate)
                {
                    if (_latest is not null)
                    {
                        Interlocked.Increment(ref _dropped);
                    }
                    _latest = payload;
                }
                break;
            default:
                _outbox!.Append(payload);
                break;
        }
        _wake.Release();
        return true;
    }

    /// <summary>Publishes kept readings whenever connected, oldest first, until <paramref name="stopping"/> fires.</summary>
    public async Task RunAsync(CancellationToken stopping)
    {
        if (_options.Offline == OfflinePolicy.Drop)
        {
            return;
        }
        try
        {
            await SendWhileConnectedAsync(stopping).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (stopping.IsCancellationRequested)
        {
        }
    }

    async Task SendWhileConnectedAsync(CancellationToken stopping)
    {
        while (!stopping.IsCancellationRequested)
        {
            // Waiting on the store: wake now and then to send unconfirmed readings again when no acknowledgement comes.
            await _wake.WaitAsync(WaitingOnStore() ? TimeSpan.FromSeconds(1) : Timeout.InfiniteTimeSpan, stopping).ConfigureAwait(false);
            if (_options.Offline == OfflinePolicy.All)
            {
                CommitStored();
                ResendWhenSilent();
            }
            while (_wake.CurrentCount > 0)
            {
                await _wake.WaitAsync(stopping).ConfigureAwait(false); // Coalesce wake-ups: one drain serves them all.
            }
            if (!_connection.IsConnected)
            {
                continue;
            }
            var drained = _options.Offline == OfflinePolicy.Latest
                ? await SendLatestAsync(stopping).ConfigureAwait(false)
                : await DrainOutboxAsync(stopping).ConfigureAwait(false);
            if (!drained && !stopping.IsCancellationRequested)
            {
                // The link broke mid-drain; the connection's Connected callback wakes us when it is back.
                continue;
            }
        }
    }

    async Task<bool> SendLatestAsync(CancellationToken stopping)
    {
        byte[]? payload;
        lock (_gate)
        {
            payload = _latest;
        }
        if (payload is null)
        {
            return true;
        }
        if (!await _connection.TryPublishAsync(_options.Topic, payload, _options.Qos, cancellationToken: stopping).ConfigureAwait(false))
        {
            return false;
        }
        Interlocked.Increment(ref _sent);
        lock (_gate)
        {
            if (ReferenceEquals(_latest, payload))
            {
                _latest = null;
            }
            else
            {
                _wake.Release(); // A newer reading arrived while this one was in flight.
            }
        }
        return true;
    }

    bool WaitingOnStore()
    {
        lock (_gate)
        {
            return _storeAcknowledges && _unconfirmed > 0;
        }
    }

    /// <summary>Removes the readings the latest stored acknowledgement covers from the outbox's front, oldest first.</summary>
    void CommitStored()
    {
        List<StoredAck> fresh;
        lock (_gate)
        {
            fresh = _newAcks;
            _newAcks = [];
        }
        if (fresh.Count == 0)
        {
            return;
        }
        foreach (var ack in fresh)
        {
            AddStoredRun(ack);
        }
        var deviceId = _options.Topic[.._options.Topic.IndexOf('/')];
        var committed = 0;
        (long Epoch, long Seq)? last = null;
        while (true)
        {
            var batch = _outbox!.Peek(1024);
            var covered = 0;
            // A reading without seq can never be acknowledged: it goes with the acknowledged ones before it.
            while (covered < batch.Count)
            {
                if (TelemetryParser.TryParse(deviceId, batch.Payloads[covered], out var reading, out _) && reading.Seq is { } seq)
                {
                    if (!IsStored(reading.Epoch, seq))
                    {
                        break;
                    }
                    last = (reading.Epoch, seq);
                }
                covered++;
            }
            _outbox.Commit(batch, covered);
            committed += covered;
            if (covered < batch.Count || batch.Count == 0)
            {
                break;
            }
        }
        if (last is { } front)
        {
            // Runs wholly behind what left the outbox cover nothing any more.
            _storedRuns.RemoveAll(r => r.Epoch == front.Epoch && r.Seq <= front.Seq);
        }
        lock (_gate)
        {
            _unconfirmed = Math.Max(0, _unconfirmed - committed);
            if (committed > 0)
            {
                _lastStoreProgress = DateTimeOffset.UtcNow;
            }
        }
    }

    bool IsStored(long epoch, long seq)
    {
        foreach (var run in _storedRuns)
        {
            if (run.Epoch == epoch && seq >= run.From && seq <= run.Seq)
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>Merges one acknowledged run into <see cref="_storedRuns"/>; keeps at most 256, dropping the lowest.</summary>
    void AddStoredRun(StoredAck ack)
    {
        var merged = ack;
        for (var i = _storedRuns.Count - 1; i >= 0; i--)
        {
            var run = _storedRuns[i];
            if (run.Epoch == merged.Epoch && run.From <= merged.Seq + 1 && merged.From <= run.Seq + 1)
            {
                merged = new StoredAck(merged.Epoch, Math.Min(run.From, merged.From), Math.Max(run.Seq, merged.Seq));
                _storedRuns.RemoveAt(i);
            }
        }
        _storedRuns.Add(merged);
        if (_storedRuns.Count > 256)
        {
            _storedRuns.Remove(_storedRuns.MinBy(r => (r.Epoch, r.Seq))!);
        }
    }

    void ResendWhenSilent()
    {
        lock (_gate)
        {
            if (_storeAcknowledges && _unconfirmed > 0 && DateTimeOffset.UtcNow - _lastStoreProgress >= ResendAfter)
            {
                _logger.LogInformation("{Topic}: no stored acknowledgement for {Silence}; sending {Count} unconfirmed readings again",
                    _options.Topic, ResendAfter, _unconfirmed);
                _unconfirmed = 0;
                _lastStoreProgress = DateTimeOffset.UtcNow;
            }
        }
    }

    async Task<bool> DrainOutboxAsync(CancellationToken stopping)
    {
        if (StoreAcknowledges)
        {
            return await SendUnconfirmedAsync(stopping).ConfigureAwait(false);
        }
        var outbox = _outbox!;
        var window = Math.Max(1, _options.Qos == MqttQualityOfServiceLevel.AtMostOnce ? _options.ReplayWindow : Math.Min(_options.ReplayWindow, _connection.ReceiveMaximum));
        var replaying = outbox.Count > 1;
        var started = outbox.Count;
        while (_connection.IsConnected && !stopping.IsCancellationRequested)
        {
            // Several windows per batch: the window empties once per batch, before the batch is committed.
            var batch = outbox.Peek(Math.Max(window * 8, 2048));
            if (batch.Count == 0)
            {
                if (replaying && started > 100)
                {
                    _logger.LogInformation("{Topic}: outbox drained after reconnect", _options.Topic);
                }
                return true;
            }
            var sent = await PublishInOrderAsync(batch, window, stopping).ConfigureAwait(false);
            outbox.Commit(batch, sent);
            Interlocked.Add(ref _sent, sent);
            if (sent < batch.Count)
            {
                return false;
            }
        }
        return false;
    }

    /// <summary>
    /// Sends the outbox's readings after those already sent and unconfirmed, without removing any: the store's
    /// acknowledgements do (<see cref="CommitStored"/>).
    /// </summary>
    async Task<bool> SendUnconfirmedAsync(CancellationToken stopping)
    {
        var window = Math.Max(1, _options.Qos == MqttQualityOfServiceLevel.AtMostOnce ? _options.ReplayWindow : Math.Min(_options.ReplayWindow, _connection.ReceiveMaximum));
        while (_connection.IsConnected && !stopping.IsCancellationRequested)
        {
            int skip;
            lock (_gate)
            {
                skip = _unconfirmed;
            }
            var room = MaxUnconfirmed - skip;
            if (room <= 0)
            {
                return true;
            }
            var peeked = _outbox!.Peek(skip + Math.Min(room, Math.Max(window * 8, 2048)));
            if (peeked.Count <= skip)
            {
                return true;
            }
            var batch = new OutboxBatch();
            batch.Items.AddRange(peeked.Items.Skip(skip));
            var sent = await PublishInOrderAsync(batch, window, stopping).ConfigureAwait(false);
            lock (_gate)
            {
                if (_unconfirmed == 0 && skip > 0)
                {
                    return true; // A reconnect or resend started over from the front meanwhile.
                }
                if (_unconfirmed == 0)
                {
                    _lastStoreProgress = DateTimeOffset.UtcNow;
                }
                _unconfirmed = Math.Min(skip + sent, (int)Math.Min(int.MaxValue, _outbox.Count));
            }
            Interlocked.Add(ref _sent, sent);
            if (sent < batch.Count)
            {
                return false;
            }
        }
        return false;
    }

    /// <summary>
    /// Publishes a batch with up to <paramref name="window"/> publishes in flight. MQTTnet queues sends first come,
    /// first served, so they leave in order; returns how many from the front were accepted.
    /// </summary>
    async Task<int> PublishInOrderAsync(OutboxBatch batch, int window, CancellationToken stopping)
    {
        if (_options.Qos == MqttQualityOfServiceLevel.AtLeastOnce)
        {
            return await _connection.TryPublishSequenceAsync(_options.Topic, batch.Payloads, window, stopping).ConfigureAwait(false);
        }
        var inFlight = new Queue<Task<bool>>(window);
        var accepted = 0;
        var failed = false;
        for (var i = 0; i < batch.Count || inFlight.Count > 0;)
        {
            if (!failed && i < batch.Count && inFlight.Count < window)
            {
                inFlight.Enqueue(_connection.TryPublishAsync(_options.Topic, batch.Payloads[i++], _options.Qos, cancellationToken: stopping));
                continue;
            }
            if (inFlight.Count == 0)
            {
                break;
            }
            var ok = await inFlight.Dequeue().ConfigureAwait(false);
            if (ok && !failed)
            {
                accepted++;
            }
            else
            {
                failed = true;
            }
        }
        return accepted;
    }
}
