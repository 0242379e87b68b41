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
    /// <summary>Readings kept per device for the live chart.</summary>
    public const int RecentPerDevice = 600;

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
        public readonly Queue<LiveReading> Recent = new();
    }

    readonly ConcurrentDictionary<string, State> _devices = new(StringComparer.Ordinal);
    readonly Lock _adding = new();
    int _count;

    /// <summary>Records a reading; returns what the pages are sent, or null when the device limit is reached.</summary>
    public LiveReading? Add(TelemetryMessage message)
    {
        var now = clock.GetUtcNow();
        if (Get(message.DeviceId, now) is not { } state)
        {
            return null;
        }
        var reading = new LiveReading(message.Timestamp ?? now, message.Seq, message.Measurements);
        lock (state)
        {
            state.LastSeen = now;
            state.Recent.Enqueue(reading);
            while (state.Recent.Count > RecentPerDevice)
            {
                state.Recent.Dequeue();
            }
        }
        return reading;
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
                return new LiveDevice(s.Id, s.FirstSeen, s.LastSeen, online, s.Status, s.Recent.LastOrDefault(), s.LedOn, [.. s.Recent]);
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
