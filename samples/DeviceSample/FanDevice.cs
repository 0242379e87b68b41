using Nightlight.Device;
using Nightlight.Hardware;
using Nightlight.Protocol;

namespace DeviceSample;

/// <summary>A fan that can be switched.</summary>
public interface IFan
{
    /// <summary>Switches the fan.</summary>
    ValueTask SetAsync(bool on, CancellationToken cancellationToken);
}

/// <summary>
/// A third device type in a few lines: it reports the temperature, obeys the server's <c>heating_on</c> field as
/// "fan on", and, deciding alone, runs the fan above 28 °C.
/// </summary>
public sealed class FanDevice(DeviceClientOptions client, ITemperatureSensor sensor, IFan fan)
    : SensorDevice(client, TimeSpan.FromSeconds(5), "temperature", CommandMessage.Heating, loggerFactory: null, say: null)
{
    /// <inheritdoc />
    protected override async ValueTask<double?> ReadAsync(CancellationToken cancellationToken) => await sensor.ReadAsync(cancellationToken);

    /// <inheritdoc />
    protected override bool? Requested(CommandMessage command) => command.HeatingOn;

    /// <inheritdoc />
    protected override bool LocalRule(double celsius) => celsius > 28;

    /// <inheritdoc />
    protected override string DescribeLocalRule() => "fan on above 28 °C";

    /// <inheritdoc />
    protected override ValueTask SwitchAsync(bool on, CancellationToken cancellationToken) => fan.SetAsync(on, cancellationToken);
}
