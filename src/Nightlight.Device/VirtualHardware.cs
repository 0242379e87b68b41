namespace Nightlight.Device;

/// <summary>A light sensor the device reads before each telemetry message.</summary>
public interface ILightSensor
{
    /// <summary>Reads the light level: 0–1023 raw ADC counts, like the lesson's Grove sensor.</summary>
    ValueTask<double> ReadAsync(CancellationToken cancellationToken);
}

/// <summary>The nightlight's LED.</summary>
public interface ILed
{
    /// <summary>Switches the LED.</summary>
    ValueTask SetAsync(bool on, CancellationToken cancellationToken);
}

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

/// <summary>An LED in memory that remembers its state and reports changes.</summary>
public sealed class VirtualLed : ILed
{
    /// <summary>Null until the first command: a device does not know its LED before it is told.</summary>
    public bool? IsOn { get; private set; }

    /// <summary>Raised after the LED changed state.</summary>
    public event Action<bool>? Switched;

    /// <inheritdoc />
    public ValueTask SetAsync(bool on, CancellationToken cancellationToken)
    {
        if (IsOn != on)
        {
            IsOn = on;
            Switched?.Invoke(on);
        }
        return ValueTask.CompletedTask;
    }
}

/// <summary>A temperature sensor.</summary>
public interface ITemperatureSensor
{
    /// <summary>Reads the temperature in °C.</summary>
    ValueTask<double> ReadAsync(CancellationToken cancellationToken);
}

/// <summary>A heater.</summary>
public interface IHeater
{
    /// <summary>Switches the heater.</summary>
    ValueTask SetAsync(bool on, CancellationToken cancellationToken);
}

/// <summary>
/// A simulated room with a heater: each reading moves the temperature 0.1 °C toward 24 °C while heating and toward
/// 12 °C while not, unless it is held (<see cref="Set"/>). Thread-safe.
/// </summary>
public sealed class VirtualThermostat : ITemperatureSensor, IHeater
{
    readonly Lock _gate = new();
    double _temperature;
    bool _held;

    /// <summary>Starts at <paramref name="temperature"/> °C; <paramref name="hold"/> keeps it there.</summary>
    public VirtualThermostat(double temperature = 18, bool hold = false)
    {
        _temperature = temperature;
        _held = hold;
    }

    /// <summary>Null until the first command.</summary>
    public bool? IsHeating { get; private set; }

    /// <summary>Raised after the heater changed state.</summary>
    public event Action<bool>? Switched;

    /// <summary>Holds the temperature at <paramref name="temperature"/> °C.</summary>
    public void Set(double temperature)
    {
        lock (_gate)
        {
            _temperature = temperature;
            _held = true;
        }
    }

    /// <inheritdoc />
    public ValueTask<double> ReadAsync(CancellationToken cancellationToken)
    {
        lock (_gate)
        {
            if (!_held)
            {
                _temperature = Math.Round(_temperature + (IsHeating == true ? 0.1 : -0.1) * Math.Sign((IsHeating == true ? 24 : 12) - _temperature), 1);
            }
            return ValueTask.FromResult(_temperature);
        }
    }

    /// <inheritdoc />
    public ValueTask SetAsync(bool on, CancellationToken cancellationToken)
    {
        if (IsHeating != on)
        {
            IsHeating = on;
            Switched?.Invoke(on);
        }
        return ValueTask.CompletedTask;
    }
}
