namespace Nightlight.Hardware;

/// <summary>The kinds of simulated actuator a <see cref="VirtualBoard"/> can carry.</summary>
public enum ActuatorKind
{
    /// <summary>An LED: on or off.</summary>
    Led,
    /// <summary>A relay: closed (on) or open (off).</summary>
    Relay,
}

/// <summary>One simulated actuator on a numbered port. Thread-safe.</summary>
public sealed class VirtualActuator
{
    volatile bool _on;

    internal VirtualActuator(int port, ActuatorKind kind)
    {
        Port = port;
        Kind = kind;
    }

    /// <summary>Port number, 0–25 as on CounterFit.</summary>
    public int Port { get; }

    /// <summary>What the actuator is.</summary>
    public ActuatorKind Kind { get; }

    /// <summary>True while switched on. Starts off.</summary>
    public bool IsOn => _on;

    /// <summary>Raised after the actuator changed state, with the new state.</summary>
    public event Action<bool>? Switched;

    /// <summary>Switches the actuator; raises <see cref="Switched"/> only on a change.</summary>
    public void Set(bool on)
    {
        if (_on == on)
        {
            return;
        }
        _on = on;
        Switched?.Invoke(on);
    }
}
