using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using MQTTnet.Protocol;
using Nightlight.Mqtt;
using Nightlight.Protocol;
using Nightlight.Server.Ingest;
using Nightlight.Server.Storage;

namespace Nightlight.Server.Commands;

/// <summary>
/// Tells each device how far its readings are stored: <c>{"epoch": E, "from": A, "seq": N}</c> on <c>{id}/stored</c>,
/// QoS 1, not retained, so a device keeps a reading until the store (not the broker) has it. A..N is the run of seqs
/// this server stored without a gap: readings lost while it was down fall before A, so the device sends them again
/// instead of forgetting them. At most one per device and epoch every <see cref="Interval"/>: a burst ends in one.
/// </summary>
public sealed class StoredAckPublisher : BackgroundService
{
    /// <summary>Shortest time between two acknowledgements of one device's epoch.</summary>
    public static readonly TimeSpan Interval = TimeSpan.FromMilliseconds(200);

    readonly IBrokerLink _link;
    readonly ILogger<StoredAckPublisher> _logger;
    readonly Lock _gate = new();
    readonly Dictionary<(string DeviceId, long Epoch), (long From, long Seq)> _runs = [];
    HashSet<(string DeviceId, long Epoch)> _pending = [];
    // Runs that ended (a gap started a new one) before their last extent went out: published with the next tick.
    List<(string DeviceId, long Epoch, long From, long Seq)> _ended = [];
    long _failed;

    /// <summary>Listens to <paramref name="store"/>'s committed batches; publishes on the server's link, which it does not own.</summary>
    public StoredAckPublisher(TelemetryStoreWriter store, ServerLink link, IOptions<ServerOptions> options, ILogger<StoredAckPublisher> logger)
    {
        _link = link.Link;
        _logger = logger;
        if (options.Value.StoredAcks)
        {
            store.BatchStored += OnBatchStored;
        }
    }

    void OnBatchStored(IReadOnlyList<StoredReading> readings)
    {
        lock (_gate)
        {
            foreach (var r in readings)
            {
                if (r.Seq is not { } seq)
                {
                    continue;
                }
                var key = (r.DeviceId, r.Epoch);
                // In arrival order, which is the device's sending order: the next seq extends the run, one inside it is a
                // duplicate, anything else (a gap, or a resend from further back) starts a new run. A gap may be one the
                // device itself left (a damaged outbox record): the run before it still goes out, so the device can
                // forget those readings and the ones after the gap.
                if (!_runs.TryGetValue(key, out var run))
                {
                    _runs[key] = (seq, seq);
                }
                else if (seq >= run.From && seq <= run.Seq + 1)
                {
                    _runs[key] = (run.From, Math.Max(run.Seq, seq));
                }
                else
                {
                    if (_pending.Contains(key))
                    {
                        _ended.Add((r.DeviceId, r.Epoch, run.From, run.Seq));
                    }
                    _runs[key] = (seq, seq);
                }
                _pending.Add(key);
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
        List<(string DeviceId, long Epoch, long From, long Seq)> due;
        lock (_gate)
        {
            if (_pending.Count == 0)
            {
                return;
            }
            due = [.. _ended, .. _pending.Select(k => (k.DeviceId, k.Epoch, _runs[k].From, _runs[k].Seq))];
            _pending = [];
            _ended = [];
        }
        // A tick's acknowledgements leave together, one after another, and their PUBACKs are awaited afterwards: awaited
        // one by one, a thousand devices' acknowledgements took a round trip each and fell behind the readings.
        var accepted = new Task<bool>[due.Count];
        using (_link.HoldWrites())
        {
            for (var i = 0; i < due.Count; i++)
            {
                var (deviceId, epoch, from, seq) = due[i];
                accepted[i] = await _link.PublishInOrderAsync(Topics.Stored(deviceId), new StoredAck(epoch, from, seq).ToPayload(),
                    MqttQualityOfServiceLevel.AtLeastOnce, stoppingToken).ConfigureAwait(false);
            }
        }
        for (var i = 0; i < due.Count; i++)
        {
            // A lost acknowledgement costs only a resend: the device sends its unconfirmed readings again and their
            // duplicates are acknowledged once stored.
            if (!await accepted[i].ConfigureAwait(false) && ++_failed % 1000 == 1)
            {
                var (deviceId, epoch, _, seq) = due[i];
                _logger.LogWarning("Device {DeviceId}: stored acknowledgement (epoch {Epoch}, seq {Seq}) not published: no broker link ({Failed} so far)",
                    deviceId, epoch, seq, _failed);
            }
        }
    }
}
