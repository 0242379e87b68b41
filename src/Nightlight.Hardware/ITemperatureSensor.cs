namespace Nightlight.Hardware;

/// <summary>A temperature sensor.</summary>
public interface ITemperatureSensor
{
    /// <summary>Reads the temperature in °C.</summary>
    ValueTask<double> ReadAsync(CancellationToken cancellationToken);
}
