using System.Buffers;
using System.Globalization;
using Microsoft.Extensions.Logging;
using MQTTnet.Protocol;
using Nightlight.Mqtt;
using Nightlight.Protocol;

namespace Nightlight.Device;

/// <summary>
/// Decides which commands from <c>{id}/commands</c> a device applies:
/// <list type="bullet">
/// <item>state commands (latest-wins): applied unless their <c>seq</c> or <c>ts</c> is older than the last state
/// command applied, so a late, stale command never overrides a newer one; the lesson's plain <c>{"led_on": true}</c>
/// has neither and is always applied;</item>
/// <item>ordered commands: applied only when their <c>seq</c> is above the last ordered command applied, which is
/// kept in the device's data directory so duplicates are dropped across restarts too; each one, duplicate or not,
/// is acknowledged on <c>{id}/acks</c>.</item>
/// </list>
/// Does not own the connection.
/// </summary>
public sealed class CommandReceiver
{
    readonly string _deviceId;
    readonly string? _statePath;
    readonly ManagedMqttConnection _connection;
    readonly ILogger _logger;
    readonly Func<CommandMessage, CancellationToken, ValueTask> _apply;
    long? _lastStateSeq;
    DateTimeOffset? _lastStateTimestamp;
    long _lastOrderedSeq;
    long _bad;
    long _stale;
    long _duplicates;
    long _applied;
    long _refused;
    readonly IReadOnlyList<string>? _switches;

    /// <summary>
    /// Creates a receiver. <paramref name="statePath"/> is the file that keeps the last applied ordered sequence
    /// (null keeps it in memory only); <paramref name="apply"/> switches the hardware.
    /// </summary>
    public CommandReceiver(string deviceId, string? statePath, ManagedMqttConnection connection,
        Func<CommandMessage, CancellationToken, ValueTask> apply, ILogger logger, IReadOnlyList<string>? switches = null)
    {
        _deviceId = deviceId;
        _switches = switches;
        _statePath = statePath;
        _connection = connection;
        _apply = apply;
        _logger = logger;
        if (statePath is not null && File.Exists(statePath) &&
            long.TryParse(File.ReadAllText(statePath).Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var last))
        {
            _lastOrderedSeq = last;
        }
    }

    /// <summary>Called with each command that is applied, before it is applied (for lesson-style output).</summary>
    public Action<CommandMessage>? Applying { get; set; }

    /// <summary>Sequence number of the last ordered command applied (0 before the first).</summary>
    public long LastOrderedSeq => Interlocked.Read(ref _lastOrderedSeq);

    /// <summary>Commands that could not be parsed.</summary>
    public long BadCommands => Interlocked.Read(ref _bad);

    /// <summary>State commands ignored because a newer one had been applied.</summary>
    public long StaleCommands => Interlocked.Read(ref _stale);

    /// <summary>Ordered commands received again after they were applied (acknowledged again, not applied).</summary>
    public long DuplicateCommands => Interlocked.Read(ref _duplicates);

    /// <summary>Commands for a switch the device does not have: not applied (an ordered one is refused in its acknowledgement).</summary>
    public long RefusedCommands => Interlocked.Read(ref _refused);

    /// <summary>Commands applied.</summary>
    public long AppliedCommands => Interlocked.Read(ref _applied);

    /// <summary>Handles one payload from <c>{id}/commands</c>. Bad input is counted and logged, never thrown.</summary>
    public async Task HandleAsync(ReadOnlySequence<byte> payload, CancellationToken cancellationToken)
    {
        var bytes = payload.IsSingleSegment ? payload.FirstSpan : payload.ToArray();
        if (!CommandMessage.TryParse(bytes, out var command, out var error))
        {
            Interlocked.Increment(ref _bad);
            _logger.LogWarning("Device {DeviceId} ignored a bad command: {Problem}", _deviceId, error);
            return;
        }
        if (Unsupported(command) is { } missing)
        {
            Interlocked.Increment(ref _refused);
            var reason = $"no switch {missing} on this device (it has {string.Join(", ", _switches!)})";
            _logger.LogWarning("Device {DeviceId} refused command {Command}: {Reason}", _deviceId, command, reason);
            if (command.Ordered)
            {
                await AcknowledgeAsync(new CommandAck(command.Id!, command.Seq!.Value, CommandAck.Refused) { Reason = reason }, cancellationToken).ConfigureAwait(false);
            }
            return;
        }
        if (command.Ordered)
        {
            await HandleOrderedAsync(command, cancellationToken).ConfigureAwait(false);
            return;
        }
        if (IsStale(command))
        {
            Interlocked.Increment(ref _stale);
            _logger.LogInformation("Device {DeviceId} ignored a stale command {Command}: a newer one was applied", _deviceId, command);
            return;
        }
        _lastStateSeq = command.Seq ?? _lastStateSeq;
        _lastStateTimestamp = command.Timestamp ?? _lastStateTimestamp;
        await ApplyAsync(command, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>The first switch the command sets that the device does not have; null when it has them all (or declared none).</summary>
    string? Unsupported(CommandMessage command) =>
        _switches is null ? null : command.Switches().Select(s => s.Name).FirstOrDefault(name => !_switches.Contains(name));

    bool IsStale(CommandMessage command) =>
        command.Seq is { } seq && _lastStateSeq is { } lastSeq ? seq < lastSeq :
        command.Timestamp is { } ts && _lastStateTimestamp is { } lastTs && ts < lastTs;

    async Task HandleOrderedAsync(CommandMessage command, CancellationToken cancellationToken)
    {
        var seq = command.Seq!.Value;
        if (seq <= _lastOrderedSeq)
        {
            Interlocked.Increment(ref _duplicates);
            _logger.LogInformation("Device {DeviceId} acknowledged again ordered command {Id} (seq {Seq}): already applied (last {Last})",
                _deviceId, command.Id, seq, _lastOrderedSeq);
        }
        else
        {
            await ApplyAsync(command, cancellationToken).ConfigureAwait(false);
            // Kept after applying and before acknowledging: a crash in between applies it once more at worst, and the
            // sender, never having seen the acknowledgement, has not moved on.
            Interlocked.Exchange(ref _lastOrderedSeq, seq);
            SaveOrderedSeq(seq);
        }
        await AcknowledgeAsync(new CommandAck(command.Id!, seq), cancellationToken).ConfigureAwait(false);
    }

    async Task AcknowledgeAsync(CommandAck ack, CancellationToken cancellationToken)
    {
        if (!await _connection.TryPublishAsync(Topics.Acks(_deviceId), ack.ToPayload(), MqttQualityOfServiceLevel.AtLeastOnce,
                cancellationToken: cancellationToken).ConfigureAwait(false))
        {
            _logger.LogWarning("Device {DeviceId} could not acknowledge {Id} (seq {Seq}) now; the sender's retry will be acknowledged", _deviceId, ack.Id, ack.Seq);
        }
    }

    async Task ApplyAsync(CommandMessage command, CancellationToken cancellationToken)
    {
        Applying?.Invoke(command);
        await _apply(command, cancellationToken).ConfigureAwait(false);
        Interlocked.Increment(ref _applied);
    }

    void SaveOrderedSeq(long seq)
    {
        if (_statePath is null)
        {
            return;
        }
        var temporary = _statePath + ".tmp";
        using (var stream = new FileStream(temporary, FileMode.Create, FileAccess.Write, FileShare.None, 1))
        {
            stream.Write(System.Text.Encoding.ASCII.GetBytes(seq.ToString(CultureInfo.InvariantCulture)));
            stream.Flush(flushToDisk: true);
        }
        File.Move(temporary, _statePath, overwrite: true);
    }
}
