namespace Nightlight.Hardware;

/// <summary>A heater.</summary>
public interface IHeater
{
    /// <summary>Switches the heater.</summary>
    ValueTask SetAsync(bool on, CancellationToken cancellationToken);
}
