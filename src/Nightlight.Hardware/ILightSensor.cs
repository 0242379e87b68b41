namespace Nightlight.Hardware;

/// <summary>A light sensor the device reads before each telemetry message.</summary>
public interface ILightSensor
{
    /// <summary>Reads the light level: 0–1023 raw ADC counts, like the lesson's Grove sensor.</summary>
    ValueTask<double> ReadAsync(CancellationToken cancellationToken);
}
