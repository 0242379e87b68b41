using System.Collections.Concurrent;
using System.Diagnostics;

namespace Nightlight.Security;

/// <summary>
/// Slows down wrong credentials, per remote address and per identity, on MQTT and HTTP alike: after
/// <see cref="FreeFailures"/> failures within <see cref="Memory"/>, each further refusal is answered only after a delay
/// that doubles from 100 ms up to <see cref="MaxDelay"/>. Only refusals wait, so a device with the right secret is never
/// held back by someone guessing at its identity.
/// </summary>
public sealed class FailureBackoff
{
    public const int FreeFailures = 10;
    public static readonly TimeSpan MaxDelay = TimeSpan.FromSeconds(5);
    public static readonly TimeSpan Memory = TimeSpan.FromMinutes(1);

    // Bounded: an attacker with many addresses or user names cannot grow it without end.
    const int MaxEntries = 10_000;

    readonly ConcurrentDictionary<string, (int Count, long Last)> _failures = new(StringComparer.Ordinal);

    /// <summary>Records a failure from <paramref name="address"/> for <paramref name="identity"/> and returns how long to wait before answering.</summary>
    public TimeSpan Fail(string? address, string? identity)
    {
        var now = Stopwatch.GetTimestamp();
        if (_failures.Count > MaxEntries)
        {
            Prune(now);
        }
        var count = 0;
        if (address is not null)
        {
            count = Math.Max(count, Count("a:" + address, now));
        }
        if (identity is not null)
        {
            count = Math.Max(count, Count("i:" + identity, now));
        }
        if (count <= FreeFailures)
        {
            return TimeSpan.Zero;
        }
        var doublings = Math.Min(count - FreeFailures - 1, 10);
        var delay = TimeSpan.FromMilliseconds(100 * (1 << doublings));
        return delay < MaxDelay ? delay : MaxDelay;
    }

    int Count(string key, long now) => _failures.AddOrUpdate(key, (1, now),
        (_, old) => (Stopwatch.GetElapsedTime(old.Last, now) > Memory ? 1 : old.Count + 1, now)).Count;

    void Prune(long now)
    {
        foreach (var (key, value) in _failures)
        {
            if (Stopwatch.GetElapsedTime(value.Last, now) > Memory)
            {
                _failures.TryRemove(key, out _);
            }
        }
        if (_failures.Count > MaxEntries)
        {
            _failures.Clear();
        }
    }
}
