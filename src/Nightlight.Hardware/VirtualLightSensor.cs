namespace Nightlight.Hardware;

/// <summary>
/// A simulated light sensor: a fixed level (<see cref="Set"/>) or, until one is set, a day/night curve that runs
/// from dusk to dawn and back once per <see cref="DayLength"/>. Thread-safe.
/// </summary>
public sealed class VirtualLightSensor : ILightSensor
{
    readonly TimeProvider _clock;
    readonly long _start;
    readonly Lock _gate = new();
    double? _fixed;

    /// <summary>Creates a sensor; <paramref name="fixedLevel"/> null means follow the curve.</summary>
    public VirtualLightSensor(double? fixedLevel = null, TimeSpan? dayLength = null, TimeProvider? clock = null)
    {
        _clock = clock ?? TimeProvider.System;
        _start = _clock.GetTimestamp();
        _fixed = fixedLevel;
        DayLength = dayLength ?? TimeSpan.FromMinutes(2);
    }

    /// <summary>One full day and night of the curve. Default 2 minutes, so a learner sees both.</summary>
    public TimeSpan DayLength { get; }

    /// <summary>The fixed level, or null while following the curve.</summary>
    public double? FixedLevel
    {
        get
        {
            lock (_gate)
            {
                return _fixed;
            }
        }
    }

    /// <summary>Holds the light at <paramref name="level"/> (0–1023).</summary>
    public void Set(double level)
    {
        lock (_gate)
        {
            _fixed = Math.Clamp(level, 0, 1023);
        }
    }

    /// <summary>Goes back to the day/night curve.</summary>
    public void FollowCurve()
    {
        lock (_gate)
        {
            _fixed = null;
        }
    }

    /// <inheritdoc />
    public ValueTask<double> ReadAsync(CancellationToken cancellationToken) => ValueTask.FromResult(Read());

    /// <summary>Reads the level now.</summary>
    public double Read()
    {
        if (FixedLevel is { } level)
        {
            return level;
        }
        // Starts mid-morning (about 510), peaks near 1000 at noon, falls to about 20 at midnight.
        var phase = _clock.GetElapsedTime(_start).TotalSeconds / DayLength.TotalSeconds;
        return Math.Round(510 + 490 * Math.Sin(2 * Math.PI * phase));
    }
}
