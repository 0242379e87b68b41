using System.Collections.Concurrent;
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
/// Where every command leaves the server. A command that changes a switch's desired state (or is sent by hand) is
/// tracked: it gets an id, sets the desired state in the <see cref="DeviceRegistry"/>, is published with QoS 1
/// (<c>delivered</c> once the broker confirms: its PUBACK, or in process, once the broker has queued it to every
/// matching subscriber; see <see cref="IBrokerLink.TryPublishAsync"/>), and for a device that acknowledges it is resent
/// until <c>acknowledged</c> or <c>expired</c>; only the newest command per device is retried (an older one is
/// <c>superseded</c>), so commands apply in order. An acknowledgement sets the reported state; a device that comes back
/// gets the desired state at once (<see cref="DeviceBack"/>). A rule's command that only restates the desired state
/// (the lesson answers every reading) goes out as the lesson's exact payload with QoS 0 and is counted, not stored.
/// </summary>
public sealed class CommandSender : BackgroundService
{
    readonly CommandOptions _options;
    readonly DeviceRegistry _devices;
    readonly TelemetryStoreWriter _store;
    readonly ServerMetrics _metrics;
    readonly ILogger<CommandSender> _logger;
    readonly TimeSpan _expiry;
    readonly TimeSpan _retry;
    readonly ConcurrentDictionary<string, Pending> _pendingByDevice = new(StringComparer.Ordinal);
    readonly ConcurrentDictionary<string, Pending> _pendingById = new(StringComparer.Ordinal);
    readonly ConcurrentDictionary<string, List<CommandRecord>> _recent = new(StringComparer.Ordinal);
    readonly IBrokerLink _connection;
    readonly ICommandRoute? _route;

    sealed class Pending(CommandRecord record, long seq)
    {
        public CommandRecord Record = record;
        public DateTimeOffset LastSent = record.Created;

        /// <summary>The ordered command's sequence number: a retry resends the same one, so the device applies it once.</summary>
        public readonly long Seq = seq;
    }

    readonly ConcurrentDictionary<string, long> _seqByDevice = new(StringComparer.Ordinal);

    // Each device's commands topic, built once rather than for every reading answered.
    readonly ConcurrentDictionary<string, string> _commandTopics = new(StringComparer.Ordinal);

    string CommandsTopic(string deviceId) => _commandTopics.GetOrAdd(deviceId, Topics.Commands);

    /// <summary>Per device, increasing, and increasing across restarts too: never below the clock in milliseconds.</summary>
    long NextSeq(string deviceId, DateTimeOffset now) =>
        _seqByDevice.AddOrUpdate(deviceId, now.ToUnixTimeMilliseconds(), (_, last) => Math.Max(last + 1, now.ToUnixTimeMilliseconds()));

    /// <summary>
    /// Sends on <paramref name="link"/>, the server's link to its broker (it publishes nothing before the link is up, and
    /// fails fast once it is closed); <paramref name="route"/>, when given, is offered every command first.
    /// </summary>
    public CommandSender(IOptions<CommandOptions> options, ServerLink link, DeviceRegistry devices, TelemetryStoreWriter store, ServerMetrics metrics,
        ILogger<CommandSender> logger, ManualOverrides overrides, ICommandRoute? route = null)
    {
        Overrides = overrides;
        _options = options.Value;
        _connection = link.Link;
        _route = route;
        _devices = devices;
        _store = store;
        _metrics = metrics;
        _logger = logger;
        _expiry = Durations.Parse(_options.Expiry, "Commands:Expiry");
        _retry = Durations.Parse(_options.RetryInterval, "Commands:RetryInterval");
        DefaultOverride = Durations.Parse(_options.DefaultOverride, "Commands:DefaultOverride");
    }

    /// <summary>How long a manual command overrides the rules when the caller does not say.</summary>
    public TimeSpan DefaultOverride { get; }

    /// <summary>A routed command was fetched by its device: <c>sent</c> becomes <c>delivered</c>.</summary>
    public void Delivered(string commandId)
    {
        if (_pendingById.TryGetValue(commandId, out var pending))
        {
            Update(pending, CommandStatus.Delivered, onlyIfOpen: true, onlyFrom: CommandStatus.Sent);
        }
    }

    /// <summary>The devices whose rule a manual command holds back.</summary>
    public ManualOverrides Overrides { get; }

    /// <summary>True while a manual command holds the device's rule back.</summary>
    public bool IsOverridden(string deviceId, DateTimeOffset now) => Overrides.IsActive(deviceId, now);

    /// <summary>
    /// A rule's decision for one switch (the lesson's <c>led_on</c> by default). Tracked when it changes the desired
    /// state; otherwise the lesson's plain answer.
    /// </summary>
    public async Task SendRuleCommandAsync(string deviceId, bool on, bool changed, CancellationToken cancellationToken, string switchName = CommandMessage.Led)
    {
        if (changed || _devices.Desired(deviceId, switchName) != on)
        {
            // Awaited like the plain answer below: the answer to the device's next reading must not overtake it. A
            // publish left running could, and the LED then ended in the state of the older command.
            await PublishAsync(Track(deviceId, switchName, on, "rule", DateTimeOffset.UtcNow, until: null));
            return;
        }
        var command = CommandMessage.ForSwitch(switchName, on);
        if (_route?.TryRoute(deviceId, command, commandId: null) == true)
        {
            _metrics.CommandSent(deviceId, command.ToString());
            return;
        }
        if (await _connection.TryPublishAsync(CommandsTopic(deviceId), command.ToPayload(), cancellationToken: cancellationToken))
        {
            _metrics.CommandSent(deviceId, command.ToString());
        }
        else if (!cancellationToken.IsCancellationRequested)
        {
            _metrics.CommandFailed();
            _logger.LogWarning("Command {Command} for device {DeviceId} not sent: no connection to the broker", command, deviceId);
        }
    }

    /// <summary>A command from the HTTP API: sent now, and the device's rules are held back for <paramref name="overrideFor"/>.</summary>
    public CommandRecord SendManual(string deviceId, bool ledOn, TimeSpan overrideFor, string switchName = CommandMessage.Led)
    {
        var now = DateTimeOffset.UtcNow;
        var pending = Track(deviceId, switchName, ledOn, "manual", now, now + overrideFor);
        Overrides.Begin(deviceId, ledOn, now + overrideFor);
        _ = PublishAsync(pending);
        return pending.Record;
    }

    /// <summary>
    /// The device is back (its presence says online): it gets its desired state at once. The command still waiting
    /// for its acknowledgement is sent again (with a fresh expiry); otherwise the first switch whose desired value the
    /// device has not reported goes out as a new command, the next one once that is acknowledged.
    /// </summary>
    public void DeviceBack(string deviceId)
    {
        if (!_devices.Acknowledges(deviceId))
        {
            return;
        }
        var now = DateTimeOffset.UtcNow;
        if (_pendingByDevice.TryGetValue(deviceId, out var pending) && Renew(pending, now) is { } renewed)
        {
            Keep(renewed);
            _ = PublishAsync(pending);
            return;
        }
        SendNextOutOfSync(deviceId, now);
    }

    /// <summary>Gives a command still open a fresh expiry from <paramref name="now"/>; null when it has ended meanwhile.</summary>
    CommandRecord? Renew(Pending pending, DateTimeOffset now)
    {
        lock (pending)
        {
            return CommandStatus.IsFinal(pending.Record.Status) ? null : pending.Record = pending.Record with { Expires = now + _expiry, Updated = now };
        }
    }

    /// <summary>Sends the desired value of the first switch the device has not reported, keeping its source and override.</summary>
    void SendNextOutOfSync(string deviceId, DateTimeOffset now)
    {
        if (_devices.OutOfSync(deviceId) is [var next, ..])
        {
            _logger.LogInformation("Device {DeviceId} is back with {Switch} not at its desired {Value} ({Source}): sending it again",
                deviceId, next.Name, next.Desired, next.Source);
            _ = PublishAsync(Track(deviceId, next.Name, next.Desired!.Value, next.Source ?? "rule", now, next.Until, setDesired: false));
        }
    }

    /// <summary>The commands of a device still in memory (newest first), fresher than what the store may have yet.</summary>
    public IReadOnlyList<CommandRecord> Recent(string deviceId)
    {
        if (!_recent.TryGetValue(deviceId, out var recent))
        {
            return [];
        }
        lock (recent)
        {
            var newestFirst = recent.ToList();
            newestFirst.Reverse();
            return newestFirst;
        }
    }

    /// <summary>Records a new command as the device's newest and its value as desired; the caller publishes it.</summary>
    Pending Track(string deviceId, string switchName, bool on, string source, DateTimeOffset now, DateTimeOffset? until, bool setDesired = true)
    {
        var record = new CommandRecord(Guid.CreateVersion7().ToString("N"), deviceId, on, source, CommandStatus.Sent, now, now, now + _expiry)
        {
            Switch = switchName,
        };
        var pending = new Pending(record, NextSeq(deviceId, now));
        if (setDesired)
        {
            // Also makes the device known when it never sends telemetry (a light driven by a group rule).
            _devices.SetDesired(deviceId, switchName, on, source, now, until);
        }
        if (_pendingByDevice.TryGetValue(deviceId, out var older))
        {
            // Only the newest command per device is retried (latest wins): an older one left unacknowledged is superseded.
            Update(older, CommandStatus.Superseded, onlyIfOpen: true);
        }
        _pendingByDevice[deviceId] = pending;
        _pendingById[record.Id] = pending;
        Keep(record);
        return pending;
    }

    async Task PublishAsync(Pending pending)
    {
        var record = pending.Record;
        pending.LastSent = DateTimeOffset.UtcNow;
        // Lesson devices get the lesson's exact payload; a device that acknowledges needs the id to echo back.
        var plain = CommandMessage.ForSwitch(record.Switch, record.LedOn);
        var message = _devices.Acknowledges(record.DeviceId) ? plain with { Id = record.Id, Seq = pending.Seq, Ordered = true } : plain;
        if (_route?.TryRoute(record.DeviceId, message, record.Id) == true)
        {
            _metrics.CommandSent(record.DeviceId, plain.ToString());
            return;
        }
        var payload = message.ToPayload();
        Task<bool> accepted;
        try
        {
            // Awaited until the command has left, so the next one cannot overtake it; the broker's acceptance (its
            // PUBACK over MQTT) is then waited for off the caller's path: the server's loop does not pause for it.
            accepted = await _connection.PublishInOrderAsync(CommandsTopic(record.DeviceId), payload, (MqttQualityOfServiceLevel)_options.TrackedQos);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            LogNotPublished(record, e);
            accepted = Task.FromResult(false);
        }
        if (accepted.IsCompletedSuccessfully)
        {
            Accepted(pending, accepted.Result);
        }
        else
        {
            _ = AcceptedAsync(pending, accepted);
        }
    }

    async Task AcceptedAsync(Pending pending, Task<bool> accepted)
    {
        bool published;
        try
        {
            published = await accepted;
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            LogNotPublished(pending.Record, e);
            published = false;
        }
        Accepted(pending, published);
    }

    /// <summary>A publish that threw, when it was written or while its acceptance was awaited.</summary>
    void LogNotPublished(CommandRecord record, Exception e) =>
        _logger.LogWarning("Command {Id} for device {DeviceId} not published: {Error}", record.Id, record.DeviceId, e.Message);

    /// <summary>The broker accepted the command (<c>delivered</c>), or it could not be sent.</summary>
    void Accepted(Pending pending, bool published)
    {
        var record = pending.Record;
        if (published)
        {
            _metrics.CommandSent(record.DeviceId, CommandMessage.ForSwitch(record.Switch, record.LedOn).ToString());
            Update(pending, CommandStatus.Delivered, onlyIfOpen: true, onlyFrom: CommandStatus.Sent);
        }
        else
        {
            _metrics.CommandFailed();
            _logger.LogWarning("Command {Command} for device {DeviceId} not sent: no connection to the broker", CommandMessage.ForSwitch(record.Switch, record.LedOn), record.DeviceId);
            // A device that acknowledges gets another try at the next retry; a lesson device's command has failed.
            if (!_devices.Acknowledges(record.DeviceId))
            {
                Update(pending, CommandStatus.Failed, onlyIfOpen: true);
            }
        }
    }

    /// <summary>An acknowledgement from <c>{id}/acks</c>.</summary>
    public void Acknowledge(string deviceId, CommandAck ack)
    {
        _devices.SetAcknowledges(deviceId);
        if (!_pendingById.TryGetValue(ack.Id, out var pending) || pending.Record.DeviceId != deviceId)
        {
            _logger.LogDebug("Acknowledgement from {DeviceId} for unknown command {Id}", deviceId, ack.Id);
            return;
        }
        // Any status but acknowledged means the device did not apply it.
        var status = ack.Status == CommandAck.Acknowledged ? CommandStatus.Acknowledged : CommandStatus.Failed;
        Update(pending, status, onlyIfOpen: true);
        var record = pending.Record;
        if (status == CommandStatus.Acknowledged)
        {
            var now = DateTimeOffset.UtcNow;
            _devices.SetReported(deviceId, record.Switch, record.LedOn, now);
            // A newer command for another switch may have superseded one still wanted: that one goes out now.
            if (!_pendingByDevice.ContainsKey(deviceId))
            {
                SendNextOutOfSync(deviceId, now);
            }
        }
        else
        {
            _logger.LogWarning("Device {DeviceId} did not apply command {Id} ({Switch} {Value}): {Status}{Reason}", deviceId, ack.Id, record.Switch,
                record.LedOn, TelemetryParser.Printable(ack.Status), ack.Reason is { } reason ? ", " + TelemetryParser.Printable(reason) : "");
        }
    }

    void Update(Pending pending, string status, bool onlyIfOpen, string? onlyFrom = null)
    {
        CommandRecord updated;
        lock (pending)
        {
            var current = pending.Record;
            if ((onlyIfOpen && CommandStatus.IsFinal(current.Status)) || (onlyFrom is not null && current.Status != onlyFrom))
            {
                return;
            }
            updated = current with { Status = status, Updated = DateTimeOffset.UtcNow };
            pending.Record = updated;
        }
        Keep(updated);
        if (CommandStatus.IsFinal(status))
        {
            _pendingById.TryRemove(updated.Id, out _);
            _pendingByDevice.TryRemove(new(updated.DeviceId, pending));
        }
    }

    /// <summary>
    /// Stores a command's state and keeps it in memory (for <see cref="Recent"/>) until the store has written it. At
    /// thousands of commands a second, states kept longer outlived every young garbage collection and were copied at
    /// each one (docs/benchmarks/gc-and-jit.md#commands-leave-memory-once-stored).
    /// </summary>
    void Keep(CommandRecord record)
    {
        Remember(record);
        _store.Write(record);
        _store.AfterWrite(() => Forget(record));
    }

    /// <summary>Drops a stored state from memory, unless a newer state of the command has replaced it there.</summary>
    void Forget(CommandRecord record)
    {
        if (!_recent.TryGetValue(record.DeviceId, out var recent))
        {
            return;
        }
        lock (recent)
        {
            for (var i = recent.Count - 1; i >= 0; i--)
            {
                if (ReferenceEquals(recent[i], record))
                {
                    recent.RemoveAt(i);
                    return;
                }
            }
        }
    }

    void Remember(CommandRecord record)
    {
        var recent = _recent.GetOrAdd(record.DeviceId, _ => new List<CommandRecord>());
        lock (recent)
        {
            // One entry per id: a status change replaces the older state of the same command, which is nearly
            // always the newest entry, so the search from the end is short.
            for (var i = recent.Count - 1; i >= 0; i--)
            {
                if (recent[i].Id == record.Id)
                {
                    recent[i] = record;
                    return;
                }
            }
            if (recent.Count >= _options.RecentPerDevice)
            {
                recent.RemoveAt(0);
            }
            recent.Add(record);
        }
    }

    /// <summary>Retries the newest unacknowledged command of each device that acknowledges; expires the old ones.</summary>
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        using var timer = new PeriodicTimer(TimeSpan.FromMilliseconds(Math.Clamp(_retry.TotalMilliseconds / 2, 100, 1000)));
        while (await timer.WaitForNextTickAsync(stoppingToken).ConfigureAwait(false))
        {
            var now = DateTimeOffset.UtcNow;
            foreach (var pending in _pendingById.Values)
            {
                var record = pending.Record;
                if (!_devices.Acknowledges(record.DeviceId))
                {
                    // A lesson device never acknowledges: its command ends at delivered (or failed).
                    if (record.Status == CommandStatus.Delivered || now > record.Expires)
                    {
                        _pendingById.TryRemove(record.Id, out _);
                        _pendingByDevice.TryRemove(new(record.DeviceId, pending));
                    }
                    continue;
                }
                if (now > record.Expires)
                {
                    Update(pending, CommandStatus.Expired, onlyIfOpen: true);
                }
                else if (now - pending.LastSent >= _retry)
                {
                    _ = PublishAsync(pending);
                }
            }
        }
    }
}
