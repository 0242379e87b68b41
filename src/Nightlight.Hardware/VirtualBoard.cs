using System.Collections.Concurrent;

namespace Nightlight.Hardware;

/// <summary>
/// Simulated hardware in the spirit of CounterFit: sensors and actuators on numbered ports (0–25), read and switched by
/// device code in this process or through the CounterFit-compatible HTTP API. Thread-safe.
/// </summary>
public sealed class VirtualBoard
{
    /// <summary>Lowest port number.</summary>
    public const int FirstPort = 0;

    /// <summary>Highest port number, as on CounterFit.</summary>
    public const int LastPort = 25;

    /// <summary>The lesson's light sensor port (analog A0 on the Grove Base Hat).</summary>
    public const int LightPort = 0;

    /// <summary>The lesson's LED port (digital D5 on the Grove Base Hat).</summary>
    public const int LedPort = 5;

    readonly ConcurrentDictionary<int, VirtualSensor> _sensors = new();
    readonly ConcurrentDictionary<int, VirtualActuator> _actuators = new();
    readonly TimeProvider _clock;
    readonly Lock _gate = new();

    /// <summary>Creates an empty board; <paramref name="dayLength"/> is the length of the sensors' day/night curve.</summary>
    public VirtualBoard(TimeSpan? dayLength = null, TimeProvider? clock = null)
    {
        DayLength = dayLength ?? TimeSpan.FromMinutes(2);
        _clock = clock ?? TimeProvider.System;
    }

    /// <summary>
    /// The nightlight as the lesson wires it: a light sensor on port 0 and an LED on port 5. The light follows the
    /// day/night curve, or holds <paramref name="light"/> when given.
    /// </summary>
    public static VirtualBoard CreateNightlight(double? light = null, TimeSpan? dayLength = null, TimeProvider? clock = null)
    {
        var board = new VirtualBoard(dayLength, clock);
        var sensor = board.AddSensor(LightPort, SensorKind.Light);
        // The curve keeps the lesson's range: about 20 at midnight, about 1000 at noon.
        sensor.Apply(sensor.Settings with { Mode = light is null ? SensorMode.DayNight : SensorMode.Fixed, Value = light ?? sensor.Range.Initial, Minimum = 20, Maximum = 1000 });
        board.AddActuator(LedPort, ActuatorKind.Led);
        return board;
    }

    /// <summary>Length of one day and night of the curve, for sensors added to this board.</summary>
    public TimeSpan DayLength { get; }

    /// <summary>Raised after a sensor or actuator was added, removed, set or switched.</summary>
    public event Action? Changed;

    /// <summary>When device code last read or wrote through the CounterFit API (CounterFit's "connected" light).</summary>
    public DateTimeOffset? LastContact { get; private set; }

    /// <summary>The sensors, by port.</summary>
    public IReadOnlyList<VirtualSensor> Sensors => [.. _sensors.Values.OrderBy(s => s.Port)];

    /// <summary>The actuators, by port.</summary>
    public IReadOnlyList<VirtualActuator> Actuators => [.. _actuators.Values.OrderBy(a => a.Port)];

    /// <summary>True when <paramref name="port"/> is a valid port number.</summary>
    public static bool IsValidPort(int port) => port is >= FirstPort and <= LastPort;

    /// <summary>Adds a sensor on a free port; throws when the port is taken or out of range (a caller's bug).</summary>
    public VirtualSensor AddSensor(int port, SensorKind kind)
    {
        VirtualSensor sensor;
        lock (_gate)
        {
            EnsureFree(port);
            sensor = new VirtualSensor(port, kind, DayLength, _clock);
            sensor.Changed += RaiseChanged;
            _sensors[port] = sensor;
        }
        RaiseChanged();
        return sensor;
    }

    /// <summary>Adds an actuator on a free port; throws when the port is taken or out of range (a caller's bug).</summary>
    public VirtualActuator AddActuator(int port, ActuatorKind kind)
    {
        VirtualActuator actuator;
        lock (_gate)
        {
            EnsureFree(port);
            actuator = new VirtualActuator(port, kind);
            actuator.Switched += _ => RaiseChanged();
            _actuators[port] = actuator;
        }
        RaiseChanged();
        return actuator;
    }

    /// <summary>True when the port has neither a sensor nor an actuator.</summary>
    public bool IsFree(int port) => !_sensors.ContainsKey(port) && !_actuators.ContainsKey(port);

    /// <summary>Removes whatever is on <paramref name="port"/>; false when nothing was.</summary>
    public bool Remove(int port)
    {
        bool removed;
        lock (_gate)
        {
            removed = _sensors.TryRemove(port, out _) | _actuators.TryRemove(port, out _);
        }
        if (removed)
        {
            RaiseChanged();
        }
        return removed;
    }

    /// <summary>The sensor on <paramref name="port"/>, if there is one.</summary>
    public bool TryGetSensor(int port, out VirtualSensor sensor) => _sensors.TryGetValue(port, out sensor!);

    /// <summary>The actuator on <paramref name="port"/>, if there is one.</summary>
    public bool TryGetActuator(int port, out VirtualActuator actuator) => _actuators.TryGetValue(port, out actuator!);

    /// <summary>Notes that device code reached the board through the CounterFit API.</summary>
    public void Touch() => LastContact = _clock.GetUtcNow();

    void EnsureFree(int port)
    {
        if (!IsValidPort(port))
        {
            throw new ArgumentOutOfRangeException(nameof(port), port, $"Ports run from {FirstPort} to {LastPort}.");
        }
        if (!IsFree(port))
        {
            throw new InvalidOperationException($"Port {port} is already in use.");
        }
    }

    void RaiseChanged() => Changed?.Invoke();
}

/// <summary>The light sensor on a board port, as the nightlight device reads it. Does not own the board.</summary>
public sealed class BoardLightSensor(VirtualBoard board, int port = VirtualBoard.LightPort) : ILightSensor
{
    /// <inheritdoc />
    /// <remarks>A port without a sensor reads 0, as an unconnected analog pin would.</remarks>
    public ValueTask<double> ReadAsync(CancellationToken cancellationToken) =>
        ValueTask.FromResult(board.TryGetSensor(port, out var sensor) ? sensor.Read() : 0);
}

/// <summary>The LED on a board port, as the nightlight device switches it. Does not own the board.</summary>
public sealed class BoardLed(VirtualBoard board, int port = VirtualBoard.LedPort) : ILed
{
    /// <inheritdoc />
    /// <remarks>With no actuator on the port the command goes nowhere, as with an unplugged LED.</remarks>
    public ValueTask SetAsync(bool on, CancellationToken cancellationToken)
    {
        if (board.TryGetActuator(port, out var actuator))
        {
            actuator.Set(on);
        }
        return ValueTask.CompletedTask;
    }
}
