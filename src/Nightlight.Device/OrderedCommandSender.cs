using System.Buffers;
using System.Collections.Concurrent;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using MQTTnet.Protocol;
using Nightlight.Mqtt;
using Nightlight.Protocol;

namespace Nightlight.Device;

/// <summary>How an ordered command ended.</summary>
public enum OrderedCommandOutcome
{
    /// <summary>The device acknowledged it: applied now or earlier.</summary>
    Acknowledged,

    /// <summary>No acknowledgement came before it expired; later commands for the device go ahead.</summary>
    Expired,
}

/// <summary>Settings of an <see cref="OrderedCommandSender"/>.</summary>
public sealed class OrderedCommandSenderOptions
{
    /// <summary>Time to wait for an acknowledgement before sending the same command again. Default 2 s.</summary>
    public TimeSpan RetryInterval { get; set; } = TimeSpan.FromSeconds(2);

    /// <summary>How long a command is retried before it expires. Default 5 minutes.</summary>
    public TimeSpan Expiry { get; set; } = TimeSpan.FromMinutes(5);
}

/// <summary>
/// The sending side of ordered commands (for a server, or any client that commands devices): per device, one
/// command in flight at a time, sent again every <see cref="OrderedCommandSenderOptions.RetryInterval"/> until the
/// device acknowledges it on <c>{id}/acks</c> or it expires; only then does the next one go. Together with the
/// device dropping any <c>seq</c> it has already passed, each command is applied at most once and never after a
/// later one. Sequence numbers start at the current Unix time in milliseconds and count up, so a sender restarted
/// without storage still sends numbers above the ones a device has seen (while it averages under 1,000 commands a
/// second per device and its clock does not go back).
/// <para>The owner routes incoming messages to <see cref="TryHandleAck"/> and subscribes to <see cref="Topics.AllAcks"/>
/// (or <see cref="Topics.Acks"/> per device). Does not own the connection.</para>
/// </summary>
public sealed class OrderedCommandSender : IAsyncDisposable
{
    sealed class Pending(CommandMessage command, DateTimeOffset expires)
    {
        public CommandMessage Command { get; } = command;
        public DateTimeOffset Expires { get; } = expires;
        public TaskCompletionSource<OrderedCommandOutcome> Done { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public TaskCompletionSource Acked { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    sealed class DeviceQueue
    {
        public Channel<Pending> Commands { get; } = Channel.CreateUnbounded<Pending>(new UnboundedChannelOptions { SingleReader = true });
        public long LastSeq { get; set; }
        public Pending? InFlight { get; set; }
        public Task? Worker { get; set; }
    }

    readonly ManagedMqttConnection _connection;
    readonly OrderedCommandSenderOptions _options;
    readonly ILogger _logger;
    readonly TimeProvider _clock;
    readonly ConcurrentDictionary<string, DeviceQueue> _devices = new(StringComparer.Ordinal);
    readonly CancellationTokenSource _stopping = new();
    readonly Lock _gate = new();
    long _retries;

    /// <summary>Creates a sender that publishes through <paramref name="connection"/>.</summary>
    public OrderedCommandSender(ManagedMqttConnection connection, OrderedCommandSenderOptions? options = null, ILogger? logger = null, TimeProvider? clock = null)
    {
        _connection = connection;
        _options = options ?? new OrderedCommandSenderOptions();
        _logger = logger ?? Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance;
        _clock = clock ?? TimeProvider.System;
    }

    /// <summary>Publishes sent again because no acknowledgement came in time.</summary>
    public long Retries => Interlocked.Read(ref _retries);

    /// <summary>
    /// Queues <paramref name="action"/> (its <c>led_on</c>/<c>heating_on</c>) as the next ordered command for
    /// <paramref name="deviceId"/>, and completes when it is acknowledged or expired. The command's id and seq are
    /// assigned here; <paramref name="sent"/> receives the command as it goes on the wire.
    /// </summary>
    public Task<OrderedCommandOutcome> SendAsync(string deviceId, CommandMessage action, Action<CommandMessage>? sent = null)
    {
        if (!Topics.IsValidDeviceId(deviceId))
        {
            throw new ArgumentException($"'{deviceId}' is not a valid device id", nameof(deviceId));
        }
        Pending pending;
        DeviceQueue queue;
        lock (_gate)
        {
            queue = _devices.GetOrAdd(deviceId, _ => new DeviceQueue());
            var seq = Math.Max(queue.LastSeq + 1, _clock.GetUtcNow().ToUnixTimeMilliseconds());
            queue.LastSeq = seq;
            var command = action with { Id = $"c-{seq}", Seq = seq, Ordered = true, Timestamp = _clock.GetUtcNow() };
            pending = new Pending(command, _clock.GetUtcNow() + _options.Expiry);
            queue.Worker ??= Task.Run(() => RunAsync(deviceId, queue, _stopping.Token), CancellationToken.None);
        }
        queue.Commands.Writer.TryWrite(pending);
        sent?.Invoke(pending.Command);
        return pending.Done.Task;
    }

    /// <summary>
    /// Takes a message from the connection: true when it was an acknowledgement on <c>{id}/acks</c> (handled here),
    /// false for any other topic. A bad acknowledgement is logged and counted as handled.
    /// </summary>
    public bool TryHandleAck(string topic, ReadOnlySequence<byte> payload)
    {
        if (!Topics.TryParseDeviceTopic(topic, Topics.AcksLevel, out var deviceId))
        {
            return false;
        }
        var bytes = payload.IsSingleSegment ? payload.FirstSpan : payload.ToArray();
        if (!CommandAck.TryParse(bytes, out var ack, out var error))
        {
            _logger.LogWarning("Ignored a bad acknowledgement from device {DeviceId}: {Problem}", deviceId, error);
            return true;
        }
        if (_devices.TryGetValue(deviceId, out var queue) && queue.InFlight is { } inFlight && inFlight.Command.Id == ack.Id &&
            ack.Status == CommandAck.Acknowledged)
        {
            inFlight.Acked.TrySetResult();
        }
        return true;
    }

    async Task RunAsync(string deviceId, DeviceQueue queue, CancellationToken stopping)
    {
        try
        {
            await foreach (var pending in queue.Commands.Reader.ReadAllAsync(stopping).ConfigureAwait(false))
            {
                queue.InFlight = pending;
                var outcome = await DeliverAsync(deviceId, pending, stopping).ConfigureAwait(false);
                queue.InFlight = null;
                pending.Done.TrySetResult(outcome);
            }
        }
        catch (OperationCanceledException) when (stopping.IsCancellationRequested)
        {
        }
    }

    async Task<OrderedCommandOutcome> DeliverAsync(string deviceId, Pending pending, CancellationToken stopping)
    {
        var payload = pending.Command.ToPayload();
        var attempts = 0;
        while (true)
        {
            var left = pending.Expires - _clock.GetUtcNow();
            if (left <= TimeSpan.Zero)
            {
                _logger.LogWarning("Ordered command {Id} for device {DeviceId} expired after {Attempts} attempts", pending.Command.Id, deviceId, attempts);
                return OrderedCommandOutcome.Expired;
            }
            if (attempts++ > 0)
            {
                Interlocked.Increment(ref _retries);
            }
            await _connection.TryPublishAsync(Topics.Commands(deviceId), payload, MqttQualityOfServiceLevel.AtLeastOnce, cancellationToken: stopping)
                .ConfigureAwait(false);
            var wait = left < _options.RetryInterval ? left : _options.RetryInterval;
            var acked = pending.Acked.Task;
            if (await Task.WhenAny(acked, Task.Delay(wait, _clock, stopping)).ConfigureAwait(false) == acked)
            {
                return OrderedCommandOutcome.Acknowledged;
            }
            stopping.ThrowIfCancellationRequested();
        }
    }

    /// <summary>Stops retrying; commands not yet acknowledged stay incomplete.</summary>
    public async ValueTask DisposeAsync()
    {
        await _stopping.CancelAsync().ConfigureAwait(false);
        await Task.WhenAll(_devices.Values.Select(d => d.Worker ?? Task.CompletedTask)).ConfigureAwait(false);
        _stopping.Dispose();
    }
}
