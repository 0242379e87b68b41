using System.Collections.Concurrent;
using Nightlight.Protocol;

namespace Nightlight.Web;

/// <summary>One reading as the pages draw it.</summary>
/// <param name="Ts">When it arrived (or the device's own time, when it sent one).</param>
/// <param name="Seq">The device's sequence number, when it sent one.</param>
/// <param name="Measurements">Every measurement by name, <c>light</c> included.</param>
public sealed record LiveReading(DateTimeOffset Ts, long? Seq, IReadOnlyDictionary<string, double> Measurements);

/// <summary>What the pages know about one device, from what passed on the broker since this process started.</summary>
public sealed record LiveDevice(
    string Id,
    DateTimeOffset FirstSeen,
    DateTimeOffset LastSeen,
    bool Online,
    string? Status,
    LiveReading? LastReading,
    bool? LedOn,
    IReadOnlyList<LiveReading> Recent);

/// <summary>
/// The devices seen on the broker, with their last readings in memory (a short window for the live chart; stored
/// history comes from the server's API). Thread-safe.
/// </summary>
public sealed class LiveDevices(TimeProvider clock)
{
    /// <summary>Readings kept per device for the live chart, while few devices report.</summary>
    public const int RecentPerDevice = 600;

    /// <summary>
    /// Readings kept for the live chart over all devices: with more than 100 devices each keeps its share, but never
    /// fewer than <see cref="RecentPerDeviceAtLeast"/>. A kept reading takes about 80 bytes, so 1,000 devices at 600
    /// each held 48 MB in the broker's process; this keeps it near 5 MB.
    /// </summary>
    public const int RecentInAll = 60_000;

    /// <summary>Readings kept per device however many devices report.</summary>
    public const int RecentPerDeviceAtLeast = 60;

    /// <summary>How many readings of each device the live chart keeps with <paramref name="devices"/> devices.</summary>
    public static int RecentFor(int devices) => Math.Clamp(RecentInAll / Math.Max(1, devices), RecentPerDeviceAtLeast, RecentPerDevice);

    /// <summary>Devices tracked at most, so a flood of made-up ids cannot fill memory.</summary>
    public const int MaxDevices = 1000;

    /// <summary>A device that sent nothing for this long, and said nothing about its presence, counts as offline.</summary>
    public static readonly TimeSpan Silence = TimeSpan.FromSeconds(30);

    sealed class State(string id, DateTimeOffset now)
    {
        public readonly string Id = id;
        public readonly DateTimeOffset FirstSeen = now;
        public DateTimeOffset LastSeen = now;
        public string? Status;
        public bool? StatusOnline;
        public bool? LedOn;
        public readonly RecentReadings Recent = new();
    }

    /// <summary>
    /// A device's last readings, oldest first, in a ring of plain values: a reading kept for minutes is not an object
    /// of its own. Objects that live that long are promoted twice by the garbage collector and then die in its oldest
    /// generation; at a few thousand readings a second they made every young collection copy the whole live chart.
    /// </summary>
    sealed class RecentReadings
    {
        const int Inline = 4;
        readonly List<string> _names = [];
        Kept[] _ring = new Kept[8];
        int _start;

        public int Count { get; private set; }

        public void Add(DateTimeOffset ts, long? seq, Measurements measurements, int capacity)
        {
            var kept = new Kept { Ts = ts, Seq = seq ?? 0, HasSeq = seq is not null };
            if (!TryKeepInline(measurements, ref kept))
            {
                kept.Count = 0;
                kept.Overflow = measurements;
            }
            // Full (or over a share that shrank as devices joined): the ring becomes exactly the share, newest kept.
            if (Count >= capacity && _ring.Length != capacity)
            {
                Resize(capacity);
            }
            if (Count == _ring.Length && _ring.Length < capacity)
            {
                Resize(Math.Min(capacity, _ring.Length * 2));
            }
            if (Count == _ring.Length)
            {
                _ring[_start] = kept;
                _start = (_start + 1) % _ring.Length;
            }
            else
            {
                _ring[(_start + Count) % _ring.Length] = kept;
                Count++;
            }
        }

        /// <summary>A ring of <paramref name="length"/> with the newest readings that fit, oldest first.</summary>
        void Resize(int length)
        {
            var keep = Math.Min(Count, length);
            var resized = new Kept[length];
            for (var i = 0; i < keep; i++)
            {
                resized[i] = _ring[(_start + Count - keep + i) % _ring.Length];
            }
            _ring = resized;
            _start = 0;
            Count = keep;
        }

        bool TryKeepInline(Measurements measurements, ref Kept kept)
        {
            if (measurements.Count > Inline)
            {
                return false;
            }
            foreach (var (name, value) in measurements)
            {
                var index = _names.IndexOf(name);
                if (index < 0)
                {
                    if (_names.Count == byte.MaxValue)
                    {
                        return false;
                    }
                    index = _names.Count;
                    _names.Add(name);
                }
                kept.Names[kept.Count] = (byte)index;
                kept.Values[kept.Count] = value;
                kept.Count++;
            }
            return true;
        }

        public LiveReading? Last => Count == 0 ? null : Read(_ring[(_start + Count - 1) % _ring.Length]);

        public List<LiveReading> ToList()
        {
            var list = new List<LiveReading>(Count);
            for (var i = 0; i < Count; i++)
            {
                list.Add(Read(_ring[(_start + i) % _ring.Length]));
            }
            return list;
        }

        LiveReading Read(in Kept kept)
        {
            IReadOnlyDictionary<string, double> measurements = kept.Overflow ?? Measurements(kept);
            return new LiveReading(kept.Ts, kept.HasSeq ? kept.Seq : null, measurements);
        }

        Dictionary<string, double> Measurements(in Kept kept)
        {
            var measurements = new Dictionary<string, double>(kept.Count, StringComparer.Ordinal);
            for (var i = 0; i < kept.Count; i++)
            {
                measurements[_names[kept.Names[i]]] = kept.Values[i];
            }
            return measurements;
        }

        struct Kept
        {
            public DateTimeOffset Ts;
            public long Seq;
            public bool HasSeq;
            public int Count;
            public InlineNames Names;
            public InlineValues Values;
            public Measurements? Overflow;
        }

        [System.Runtime.CompilerServices.InlineArray(Inline)]
        struct InlineNames
        {
            byte _first;
        }

        [System.Runtime.CompilerServices.InlineArray(Inline)]
        struct InlineValues
        {
            double _first;
        }
    }

    readonly ConcurrentDictionary<string, State> _devices = new(StringComparer.Ordinal);
    readonly Lock _adding = new();
    int _count;

    /// <summary>
    /// Records a reading; returns its time as the pages show it (the device's own, else now), or null when the device
    /// limit is reached.
    /// </summary>
    public DateTimeOffset? Add(TelemetryMessage message)
    {
        var now = clock.GetUtcNow();
        if (Get(message.DeviceId, now) is not { } state)
        {
            return null;
        }
        var ts = message.Timestamp ?? now;
        lock (state)
        {
            state.LastSeen = now;
            state.Recent.Add(ts, message.Seq, message.Measurements, RecentFor(Volatile.Read(ref _count)));
        }
        return ts;
    }

    /// <summary>Records a command seen on the way to the device.</summary>
    public bool Command(string deviceId, CommandMessage command)
    {
        if (Get(deviceId, clock.GetUtcNow()) is not { } state)
        {
            return false;
        }
        lock (state)
        {
            state.LedOn = command.LedOn;
        }
        return true;
    }

    /// <summary>Records a presence message; <paramref name="online"/> is null when its text did not say.</summary>
    public bool Status(string deviceId, string text, bool? online)
    {
        if (Get(deviceId, clock.GetUtcNow()) is not { } state)
        {
            return false;
        }
        lock (state)
        {
            state.Status = text;
            state.StatusOnline = online;
        }
        return true;
    }

    /// <summary>Every device, by id.</summary>
    public IReadOnlyList<LiveDevice> Snapshot()
    {
        var now = clock.GetUtcNow();
        return [.. _devices.Values.OrderBy(s => s.Id, StringComparer.Ordinal).Select(s =>
        {
            lock (s)
            {
                var online = s.StatusOnline ?? now - s.LastSeen < Silence;
                return new LiveDevice(s.Id, s.FirstSeen, s.LastSeen, online, s.Status, s.Recent.Last, s.LedOn, s.Recent.ToList());
            }
        })];
    }

    State? Get(string id, DateTimeOffset now)
    {
        if (_devices.TryGetValue(id, out var state))
        {
            return state;
        }
        // Counting a ConcurrentDictionary takes all its locks, so the count is kept here. Devices are never removed, so
        // once the list is full an unlisted device is turned away without a lock; until then additions take turns, so
        // readers on several threads (the in-process link) fill the list exactly to MaxDevices.
        if (Volatile.Read(ref _count) >= MaxDevices)
        {
            return null;
        }
        lock (_adding)
        {
            if (_devices.TryGetValue(id, out state))
            {
                return state;
            }
            if (_count >= MaxDevices)
            {
                return null;
            }
            state = new State(id, now);
            _devices[id] = state;
            Volatile.Write(ref _count, _count + 1);
        }
        return state;
    }
}
