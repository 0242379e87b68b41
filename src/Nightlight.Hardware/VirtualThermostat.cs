namespace Nightlight.Hardware;

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
