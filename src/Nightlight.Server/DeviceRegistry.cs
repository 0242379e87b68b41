using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Nightlight.Protocol;
using Nightlight.Server.Storage;

namespace Nightlight.Server;

/// <summary>
/// What the server knows about each device right now: first and last seen, presence, last reading, LED state, and the
/// desired and reported state of each switch (<see cref="SwitchState"/>).
/// Fed by the message path, read by the history API, persisted by <see cref="TelemetryStoreWriter"/>.
/// </summary>
public sealed class DeviceRegistry
{
    readonly ConcurrentDictionary<string, DeviceState> _devices = new(StringComparer.Ordinal);

    sealed class DeviceState(string id, DateTimeOffset firstSeen)
    {
        public readonly Lock Gate = new();
        public string Id { get; } = id;
        public DateTimeOffset FirstSeen { get; set; } = firstSeen;
        public DateTimeOffset LastSeen { get; set; } = firstSeen;
        public bool? Online { get; set; }
        public bool? LedOn { get; set; }
        public bool Acknowledges { get; set; }
        public string? Mode { get; set; }
        public Dictionary<string, SwitchState>? Switches { get; set; }
        public IReadOnlyList<string>? Declared { get; set; }

        public SwitchState Switch(string name) =>
            (Switches ??= new(StringComparer.Ordinal)).TryGetValue(name, out var known) ? known : new SwitchState(name, null, null, null, null, null, null);

        // The last reading as plain values in tables of the device's own, not the reading's objects: with thousands
        // of devices those would live until the device's next reading, long enough for every young garbage
        // collection to copy them into an older generation (docs/benchmarks/gc-and-jit.md#per-connection-objects).
        bool _hasReading;
        DateTimeOffset _lastTs;
        DateTimeOffset _lastArrived;
        long? _lastSeq;
        readonly Dictionary<string, double> _lastMeasurements = new(StringComparer.Ordinal);

        public bool HasReading => _hasReading;

        public DateTimeOffset LastTs => _lastTs;

        public void Keep(StoredReading reading)
        {
            _hasReading = true;
            _lastTs = reading.Ts;
            _lastArrived = reading.Arrived;
            _lastSeq = reading.Seq;
            var sameNames = reading.Measurements.Count == _lastMeasurements.Count;
            foreach (var (name, value) in reading.Measurements)
            {
                ref var kept = ref CollectionsMarshal.GetValueRefOrNullRef(_lastMeasurements, name);
                if (Unsafe.IsNullRef(ref kept))
                {
                    sameNames = false;
                    break;
                }
                kept = value;
            }
            if (!sameNames)
            {
                _lastMeasurements.Clear();
                foreach (var (name, value) in reading.Measurements)
                {
                    _lastMeasurements[name] = value;
                }
            }
        }

        public StoredReading? LastReading => _hasReading
            ? new StoredReading(Id, _lastTs, _lastArrived, _lastSeq, new Measurements(_lastMeasurements))
            : null;
    }

    /// <summary>Loads what an earlier run stored.</summary>
    public void Load(IEnumerable<DeviceRecord> devices)
    {
        foreach (var d in devices)
        {
            var state = _devices[d.Id] = new DeviceState(d.Id, d.FirstSeen)
            {
                LastSeen = d.LastSeen,
                Online = d.Online,
                LedOn = d.LedOn,
                Acknowledges = d.LastReading?.Seq is not null,
            };
            if (d.LastReading is { } last)
            {
                state.Keep(last);
            }
        }
    }

    /// <summary>Records a reading; the returned record is what gets stored.</summary>
    public StoredReading Seen(TelemetryMessage message, DateTimeOffset arrived)
    {
        var stored = new StoredReading(message.DeviceId, message.Timestamp ?? arrived, arrived, message.Seq, message.Measurements) { Epoch = message.Epoch };
        var state = _devices.GetOrAdd(message.DeviceId, static (id, at) => new DeviceState(id, at), arrived);
        lock (state.Gate)
        {
            state.LastSeen = arrived > state.LastSeen ? arrived : state.LastSeen;
            if (!state.HasReading || stored.Ts >= state.LastTs)
            {
                state.Keep(stored);
            }
            // A device that numbers its readings runs our SDK, which acknowledges commands.
            state.Acknowledges |= message.Seq is not null;
        }
        return stored;
    }

    /// <summary>Records presence from <c>{id}/status</c>, with the device's mode when it says one (<c>cloud</c>/<c>local</c>).</summary>
    public void SetOnline(string deviceId, bool online, DateTimeOffset now, string? mode = null, IReadOnlyList<string>? switches = null)
    {
        var state = _devices.GetOrAdd(deviceId, static (id, at) => new DeviceState(id, at), now);
        lock (state.Gate)
        {
            state.Online = online;
            state.Declared = switches ?? state.Declared;
            // An offline device decides for itself or not at all; keep what it last said until it is back.
            state.Mode = online ? mode : state.Mode;
            state.Acknowledges = true;
            if (online)
            {
                state.LastSeen = now > state.LastSeen ? now : state.LastSeen;
            }
        }
    }

    /// <summary>
    /// The device a command goes to, known from now on even when it never sends telemetry (a light driven by a group
    /// rule): it has state, a command history and a card.
    /// </summary>
    public void Ensure(string deviceId, DateTimeOffset now) => _devices.GetOrAdd(deviceId, static (id, at) => new DeviceState(id, at), now);

    /// <summary>Sets what the server wants a switch to be, from a rule or by hand (then <paramref name="until"/> the override ends).</summary>
    public void SetDesired(string deviceId, string switchName, bool on, string source, DateTimeOffset now, DateTimeOffset? until = null)
    {
        var state = _devices.GetOrAdd(deviceId, static (id, at) => new DeviceState(id, at), now);
        lock (state.Gate)
        {
            var updated = state.Switch(switchName) with { Desired = on, Source = source, DesiredAt = now, Until = until };
            state.Switches![switchName] = updated;
            if (switchName == CommandMessage.Led && updated.Reported is null)
            {
                // Until the device says what it did (a lesson device never does) the command sent is all the server knows.
                state.LedOn = on;
            }
        }
    }

    /// <summary>Sets what the device says a switch is: it acknowledged a command that set it.</summary>
    public void SetReported(string deviceId, string switchName, bool on, DateTimeOffset now)
    {
        if (_devices.TryGetValue(deviceId, out var state))
        {
            lock (state.Gate)
            {
                var updated = state.Switch(switchName) with { Reported = on, ReportedAt = now };
                state.Switches![switchName] = updated;
                if (switchName == CommandMessage.Led)
                {
                    state.LedOn = on;
                }
            }
        }
    }

    /// <summary>The desired value of a switch, or null when nothing decided one yet.</summary>
    public bool? Desired(string deviceId, string switchName)
    {
        if (!_devices.TryGetValue(deviceId, out var state))
        {
            return null;
        }
        lock (state.Gate)
        {
            return state.Switches is { } switches && switches.TryGetValue(switchName, out var known) ? known.Desired : null;
        }
    }

    /// <summary>The switches whose desired value the device has not reported.</summary>
    public IReadOnlyList<SwitchState> OutOfSync(string deviceId)
    {
        if (!_devices.TryGetValue(deviceId, out var state))
        {
            return [];
        }
        lock (state.Gate)
        {
            return state.Switches is { } switches ? [.. switches.Values.Where(s => s.Desired is not null && s.Reported != s.Desired)] : [];
        }
    }

    /// <summary>Marks a device as one that sends acknowledgements.</summary>
    public void SetAcknowledges(string deviceId)
    {
        if (_devices.TryGetValue(deviceId, out var state))
        {
            lock (state.Gate)
            {
                state.Acknowledges = true;
            }
        }
    }

    /// <summary>The switches the device declared in its presence; null when it never said (a lesson device: <c>led_on</c>).</summary>
    public IReadOnlyList<string>? DeclaredSwitches(string deviceId)
    {
        if (!_devices.TryGetValue(deviceId, out var state))
        {
            return null;
        }
        lock (state.Gate)
        {
            return state.Declared;
        }
    }

    public bool Acknowledges(string deviceId) => _devices.TryGetValue(deviceId, out var state) && state.Acknowledges;

    public bool? LedOn(string deviceId) => _devices.TryGetValue(deviceId, out var state) ? state.LedOn : null;

    public bool Contains(string deviceId) => _devices.ContainsKey(deviceId);

    public DeviceRecord? Get(string deviceId) => _devices.TryGetValue(deviceId, out var state) ? Snapshot(state) : null;

    public IReadOnlyList<DeviceRecord> All() => _devices.Values.Select(Snapshot).OrderBy(d => d.Id, StringComparer.Ordinal).ToList();

    static DeviceRecord Snapshot(DeviceState state)
    {
        lock (state.Gate)
        {
            return new DeviceRecord(state.Id, state.FirstSeen, state.LastSeen, state.Online, state.LastReading, state.LedOn)
            {
                Mode = state.Mode,
                Switches = state.Switches is { } switches ? [.. switches.Values.OrderBy(s => s.Name, StringComparer.Ordinal)] : [],
            };
        }
    }
}
