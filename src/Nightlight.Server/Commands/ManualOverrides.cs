using System.Collections.Concurrent;

namespace Nightlight.Server.Commands;

/// <summary>A manual command holding a device's rule back: the LED state it set and when the rule takes over again.</summary>
public sealed record ManualOverride(string DeviceId, bool LedOn, DateTimeOffset Until);

/// <summary>
/// Which devices a manual command holds, and until when. An override ends when its time is up (noticed at the device's
/// next reading) or when someone ends it (the dashboard's "End override", <c>DELETE /api/devices/{id}/override</c>,
/// <c>resume</c> typed in <c>nightlight up</c>). Whoever shows it subscribes to <see cref="Changed"/>. Thread-safe.
/// </summary>
public sealed class ManualOverrides
{
    readonly ConcurrentDictionary<string, ManualOverride> _active = new(StringComparer.Ordinal);

    /// <summary>An override began (the new one) or ended (null, with why: <c>expired</c> or <c>ended</c>).</summary>
    public event Action<string, ManualOverride?, string>? Changed;

    /// <summary>Holds the rule of <paramref name="deviceId"/> back until <paramref name="until"/>.</summary>
    public void Begin(string deviceId, bool ledOn, DateTimeOffset until)
    {
        var value = new ManualOverride(deviceId, ledOn, until);
        _active[deviceId] = value;
        Changed?.Invoke(deviceId, value, "began");
    }

    /// <summary>True while an override holds the device's rule back; one whose time is up ends here.</summary>
    public bool IsActive(string deviceId, DateTimeOffset now)
    {
        if (!_active.TryGetValue(deviceId, out var current))
        {
            return false;
        }
        if (current.Until > now)
        {
            return true;
        }
        if (_active.TryRemove(new(deviceId, current)))
        {
            Changed?.Invoke(deviceId, null, "expired");
        }
        return false;
    }

    /// <summary>The device's override, if one is active at <paramref name="now"/>.</summary>
    public ManualOverride? Current(string deviceId, DateTimeOffset now) =>
        _active.TryGetValue(deviceId, out var current) && current.Until > now ? current : null;

    /// <summary>Every override active at <paramref name="now"/>.</summary>
    public IReadOnlyList<ManualOverride> All(DateTimeOffset now) => _active.Values.Where(o => o.Until > now).OrderBy(o => o.DeviceId, StringComparer.Ordinal).ToList();

    /// <summary>Ends the device's override now, so its next reading is decided by the rule; false when there was none.</summary>
    public bool End(string deviceId)
    {
        if (!_active.TryRemove(deviceId, out _))
        {
            return false;
        }
        Changed?.Invoke(deviceId, null, "ended");
        return true;
    }
}
