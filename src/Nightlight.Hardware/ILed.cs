namespace Nightlight.Hardware;

/// <summary>The nightlight's LED.</summary>
public interface ILed
{
    /// <summary>Switches the LED.</summary>
    ValueTask SetAsync(bool on, CancellationToken cancellationToken);
}
