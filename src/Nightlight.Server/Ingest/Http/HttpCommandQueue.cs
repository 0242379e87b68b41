using System.Collections.Concurrent;
using Nightlight.Protocol;
using Nightlight.Server.Commands;

namespace Nightlight.Server.Ingest.Http;

/// <summary>A command handed to an HTTP device: its payload and, for a tracked command, the id its status is kept under.</summary>
public sealed record FetchedCommand(CommandMessage Command, string? CommandId);

/// <summary>
/// The commands of devices that talk HTTP. A device counts as an HTTP device while it has used the HTTP device API
/// within <see cref="ActiveFor"/>; the <see cref="CommandSender"/> then offers it every command here instead of
/// publishing it on MQTT. Each device has one slot, latest wins as on the LED: a newer command replaces one not yet
/// fetched, except that an untracked restatement never replaces a tracked command saying the same (the tracked one
/// carries the id its status needs). A long-poll (<see cref="NextAsync"/>) returns as soon as a command is there.
/// A tracked command is <c>delivered</c> once fetched: the endpoint that hands it over says so (<see cref="CommandSender.Delivered"/>).
/// </summary>
public sealed class HttpCommandQueue(HttpDeviceEvents events) : ICommandRoute
{
    /// <summary>How long after its last request a device still gets its commands here rather than on MQTT.</summary>
    public static readonly TimeSpan ActiveFor = TimeSpan.FromMinutes(10);

    /// <summary>Devices tracked at most, so requests for made-up ids (in anonymous mode) cannot fill memory.</summary>
    public const int MaxDevices = 100_000;

    readonly ConcurrentDictionary<string, Slot> _slots = new(StringComparer.Ordinal);

    sealed class Slot
    {
        public readonly Lock Gate = new();
        public FetchedCommand? Pending;
        public TaskCompletionSource Arrived = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public long LastContact = Environment.TickCount64;
    }

    /// <summary>Notes a request from the device; false when too many devices are tracked already.</summary>
    public bool Touch(string deviceId)
    {
        if (!_slots.TryGetValue(deviceId, out var slot))
        {
            if (_slots.Count >= MaxDevices && !Forget())
            {
                return false;
            }
            slot = _slots.GetOrAdd(deviceId, _ => new Slot());
        }
        Volatile.Write(ref slot.LastContact, Environment.TickCount64);
        return true;
    }

    /// <inheritdoc />
    public bool TryRoute(string deviceId, CommandMessage command, string? commandId)
    {
        if (!_slots.TryGetValue(deviceId, out var slot) || !IsActive(slot))
        {
            return false;
        }
        TaskCompletionSource arrived;
        lock (slot.Gate)
        {
            var keepTracked = commandId is null && slot.Pending is { CommandId: not null } held && held.Command.LedOn == command.LedOn;
            if (!keepTracked)
            {
                slot.Pending = new FetchedCommand(command, commandId);
            }
            arrived = slot.Arrived;
            slot.Arrived = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        }
        arrived.TrySetResult();
        events.CommandQueued(deviceId, command);
        return true;
    }

    /// <summary>The device's next command, waiting up to <paramref name="wait"/> for one; null when none came.</summary>
    public async Task<FetchedCommand?> NextAsync(string deviceId, TimeSpan wait, CancellationToken cancellationToken)
    {
        if (!Touch(deviceId) || !_slots.TryGetValue(deviceId, out var slot))
        {
            return null;
        }
        var deadline = Environment.TickCount64 + (long)wait.TotalMilliseconds;
        while (true)
        {
            Task arrived;
            lock (slot.Gate)
            {
                if (slot.Pending is { } pending)
                {
                    slot.Pending = null;
                    return pending;
                }
                arrived = slot.Arrived.Task;
            }
            var remaining = deadline - Environment.TickCount64;
            if (remaining <= 0)
            {
                return null;
            }
            try
            {
                await arrived.WaitAsync(TimeSpan.FromMilliseconds(remaining), cancellationToken);
            }
            catch (TimeoutException)
            {
                return null;
            }
            // A long poll keeps the device an HTTP device for as long as it waits.
            Volatile.Write(ref slot.LastContact, Environment.TickCount64);
        }
    }

    static bool IsActive(Slot slot) => Environment.TickCount64 - Volatile.Read(ref slot.LastContact) <= ActiveFor.TotalMilliseconds;

    /// <summary>Drops devices not heard within <see cref="ActiveFor"/>; true when that made room.</summary>
    bool Forget()
    {
        foreach (var (id, slot) in _slots)
        {
            if (!IsActive(slot))
            {
                _slots.TryRemove(new KeyValuePair<string, Slot>(id, slot));
            }
        }
        return _slots.Count < MaxDevices;
    }
}
