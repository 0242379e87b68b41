using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using MQTTnet.Protocol;
using Nightlight.Mqtt;
using Nightlight.Protocol;
using Nightlight.Server.Ingest;
using Nightlight.Server.Storage;

namespace Nightlight.Server.Commands;

/// <summary>
/// Tells each device how far its readings are stored: <c>{"epoch": E, "seq": N}</c> on <c>{id}/stored</c>, QoS 1, not
/// retained, so a device keeps a reading until the store (not the broker) has it. At most one per device and epoch every
/// <see cref="Interval"/>: a burst of batches ends in one acknowledgement of its highest seq.
/// </summary>
public sealed class StoredAckPublisher : BackgroundService
{
    /// <summary>Shortest time between two acknowledgements of one device's epoch.</summary>
    public static readonly TimeSpan Interval = TimeSpan.FromMilliseconds(200);

    readonly IBrokerLink _link;
    readonly ILogger<StoredAckPublisher> _logger;
    readonly Lock _gate = new();
    Dictionary<(string DeviceId, long Epoch), long> _pending = [];
    long _failed;

    /// <summary>Listens to <paramref name="store"/>'s committed batches; publishes on the server's link, which it does not own.</summary>
    public StoredAckPublisher(TelemetryStoreWriter store, ServerLink link, ILogger<StoredAckPublisher> logger)
    {
        _link = link.Link;
        _logger = logger;
        store.BatchStored += OnBatchStored;
    }

    void OnBatchStored(IReadOnlyList<StoredProgress> progress)
    {
        lock (_gate)
        {
            foreach (var p in progress)
            {
                if (!_pending.TryGetValue((p.DeviceId, p.Epoch), out var known) || p.Seq > known)
                {
                    _pending[(p.DeviceId, p.Epoch)] = p.Seq;
                }
            }
        }
    }

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        using var timer = new PeriodicTimer(Interval);
        try
        {
            while (await timer.WaitForNextTickAsync(stoppingToken).ConfigureAwait(false))
            {
                await PublishPendingAsync(stoppingToken).ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
        }
    }

    async Task PublishPendingAsync(CancellationToken stoppingToken)
    {
        Dictionary<(string DeviceId, long Epoch), long> due;
        lock (_gate)
        {
            if (_pending.Count == 0)
            {
                return;
            }
            due = _pending;
            _pending = [];
        }
        foreach (var ((deviceId, epoch), seq) in due)
        {
            // A lost acknowledgement costs only a resend: the device sends its unconfirmed readings again and their
            // duplicates are acknowledged once stored.
            if (!await _link.TryPublishAsync(Topics.Stored(deviceId), new StoredAck(epoch, seq).ToPayload(), MqttQualityOfServiceLevel.AtLeastOnce,
                    stoppingToken).ConfigureAwait(false) && ++_failed % 1000 == 1)
            {
                _logger.LogWarning("Device {DeviceId}: stored acknowledgement (epoch {Epoch}, seq {Seq}) not published: no broker link ({Failed} so far)",
                    deviceId, epoch, seq, _failed);
            }
        }
    }
}
