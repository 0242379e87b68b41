namespace Nightlight.Hardware;

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
