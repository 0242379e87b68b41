using Microsoft.Extensions.Logging;
using Nightlight.Protocol;

namespace Nightlight.Device;

/// <summary>Settings of one nightlight device.</summary>
public sealed class NightlightDeviceOptions
{
    /// <summary>Time between telemetry messages. The lesson's 5 s by default.</summary>
    public TimeSpan Interval { get; set; } = TimeSpan.FromSeconds(5);
}

/// <summary>
/// The lesson's nightlight: reads its light sensor every interval, publishes <c>{"light": N, "seq": S, "ts": T}</c>
/// on <c>{id}/telemetry</c>, and switches its LED on each <c>{"led_on": ...}</c> from <c>{id}/commands</c>.
/// Owns the <see cref="DeviceClient"/> it creates; does not own the sensor or LED it is given.
/// </summary>
public sealed class NightlightDevice : IAsyncDisposable
{
    readonly NightlightDeviceOptions _options;
    readonly ILightSensor _sensor;
    readonly ILed _led;
    readonly ILogger _logger;
    readonly Action<string> _say;

    /// <summary>Creates a device. <paramref name="say"/> receives the lesson-style lines a learner reads.</summary>
    public NightlightDevice(DeviceClientOptions client, NightlightDeviceOptions options, ILightSensor sensor, ILed led,
        ILoggerFactory? loggerFactory = null, Action<string>? say = null)
    {
        _options = options;
        _sensor = sensor;
        _led = led;
        _logger = (loggerFactory ?? Microsoft.Extensions.Logging.Abstractions.NullLoggerFactory.Instance).CreateLogger<NightlightDevice>();
        _say = say ?? (_ => { });
        Client = new DeviceClient(client, ApplyAsync, loggerFactory);
        Client.Commands.Applying = command => _say($"Message received: {command}");
    }

    /// <summary>The device's connection, telemetry stream and command dispatcher.</summary>
    public DeviceClient Client { get; }

    /// <summary>Connects, subscribes to its commands and sends telemetry until <paramref name="stopping"/> fires.</summary>
    public Task RunAsync(CancellationToken stopping)
    {
        Client.Start();
        return DeviceClient.RunPeriodicallyAsync(_options.Interval, SendReadingAsync, stopping);
    }

    async ValueTask SendReadingAsync(CancellationToken stopping)
    {
        double light;
        try
        {
            light = await _sensor.ReadAsync(stopping).ConfigureAwait(false);
        }
        catch (Exception e) when (e is HttpRequestException or TimeoutException or IOException or System.Text.Json.JsonException
                                       or KeyNotFoundException or TaskCanceledException && !stopping.IsCancellationRequested)
        {
            // Remote hardware (a CounterFit app) can be away for a while; skip this reading and try again next interval.
            _logger.LogWarning("Device {DeviceId} could not read its light sensor: {Error}", Client.Id, e.Message);
            return;
        }
        if (await Client.SendAsync("light", light, stopping).ConfigureAwait(false) is not null)
        {
            // The lesson's line: the reading itself; seq and ts are bookkeeping.
            _say($"Sending telemetry {{\"light\": {Wire.FormatNumber(light)}}}");
        }
    }

    async ValueTask ApplyAsync(CommandMessage command, CancellationToken cancellationToken)
    {
        if (command.LedOn is not { } on)
        {
            return;
        }
        try
        {
            await _led.SetAsync(on, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is HttpRequestException or TimeoutException or IOException or TaskCanceledException && !cancellationToken.IsCancellationRequested)
        {
            _logger.LogWarning("Device {DeviceId} could not switch its LED: {Error}", Client.Id, e.Message);
        }
    }

    /// <inheritdoc />
    public ValueTask DisposeAsync() => Client.DisposeAsync();
}

/// <summary>Settings of one thermostat device.</summary>
public sealed class ThermostatDeviceOptions
{
    /// <summary>Time between temperature readings. Default 5 s.</summary>
    public TimeSpan Interval { get; set; } = TimeSpan.FromSeconds(5);
}

/// <summary>
/// The lesson's thermostat, on the same SDK: publishes <c>{"temperature": 18.5, "seq": S, "ts": T}</c> on
/// <c>{id}/telemetry</c> and switches its heater on each <c>{"heating_on": ...}</c> from <c>{id}/commands</c>.
/// Owns the <see cref="DeviceClient"/> it creates; does not own the sensor or heater.
/// </summary>
public sealed class ThermostatDevice : IAsyncDisposable
{
    readonly ThermostatDeviceOptions _options;
    readonly ITemperatureSensor _sensor;
    readonly IHeater _heater;
    readonly Action<string> _say;

    /// <summary>Creates a thermostat. <paramref name="say"/> receives the lesson-style lines.</summary>
    public ThermostatDevice(DeviceClientOptions client, ThermostatDeviceOptions options, ITemperatureSensor sensor, IHeater heater,
        ILoggerFactory? loggerFactory = null, Action<string>? say = null)
    {
        _options = options;
        _sensor = sensor;
        _heater = heater;
        _say = say ?? (_ => { });
        Client = new DeviceClient(client, ApplyAsync, loggerFactory);
        Client.Commands.Applying = command => _say($"Message received: {command}");
    }

    /// <summary>The device's connection, telemetry stream and command dispatcher.</summary>
    public DeviceClient Client { get; }

    /// <summary>Connects and sends temperatures until <paramref name="stopping"/> fires.</summary>
    public Task RunAsync(CancellationToken stopping)
    {
        Client.Start();
        return DeviceClient.RunPeriodicallyAsync(_options.Interval, SendReadingAsync, stopping);
    }

    async ValueTask SendReadingAsync(CancellationToken stopping)
    {
        var temperature = await _sensor.ReadAsync(stopping).ConfigureAwait(false);
        if (await Client.SendAsync("temperature", temperature, stopping).ConfigureAwait(false) is not null)
        {
            _say($"Sending telemetry {{\"temperature\": {Wire.FormatNumber(temperature)}}}");
        }
    }

    ValueTask ApplyAsync(CommandMessage command, CancellationToken cancellationToken) =>
        command.HeatingOn is { } on ? _heater.SetAsync(on, cancellationToken) : ValueTask.CompletedTask;

    /// <inheritdoc />
    public ValueTask DisposeAsync() => Client.DisposeAsync();
}
