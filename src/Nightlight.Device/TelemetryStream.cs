using Microsoft.Extensions.Logging;
using MQTTnet.Protocol;
using Nightlight.Mqtt;

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
    }

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

    /// <summary>Wakes the sender loop: the connection came (back) up.</summary>
    public void Wake() => _wake.Release();

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
            await _wake.WaitAsync(stopping).ConfigureAwait(false);
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

    async Task<bool> DrainOutboxAsync(CancellationToken stopping)
    {
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
