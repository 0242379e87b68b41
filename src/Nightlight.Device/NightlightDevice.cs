using Microsoft.Extensions.Logging;
using Nightlight.Hardware;
using Nightlight.Protocol;

namespace Nightlight.Device;

/// <summary>
/// A device with one sensor and one on/off actuator, the shape of both lesson devices: every interval it reads the
/// sensor and sends <c>{"MEASUREMENT": value, "seq": S, "ts": T}</c>; it switches the actuator on the server's
/// commands, or, while <see cref="DeviceClient.Mode"/> is <see cref="DeviceMode.Local"/>, on its own
/// <see cref="LocalRule"/> after each reading. A new device type says what it measures, which command field it obeys,
/// its local rule and how to read and switch its hardware. Owns the <see cref="DeviceClient"/> it creates.
/// </summary>
public abstract class SensorDevice : IAsyncDisposable
{
    readonly TimeSpan _interval;
    readonly string _measurement;
    readonly Action<string> _say;
    readonly SemaphoreSlim _switching = new(1, 1);
    double? _lastReading;

    /// <summary>
    /// Creates the device. <paramref name="measurement"/> names the reading (<c>light</c>, <c>temperature</c>);
    /// <paramref name="say"/> receives the lesson-style lines a learner reads.
    /// </summary>
    protected SensorDevice(DeviceClientOptions client, TimeSpan interval, string measurement, ILoggerFactory? loggerFactory, Action<string>? say)
        : this(client, interval, measurement, switchName: null, loggerFactory, say)
    {
    }

    /// <summary>
    /// Creates a device whose actuator is <paramref name="switchName"/> (<c>led_on</c>, <c>heating_on</c>): unless the
    /// options already say, that is the one switch it declares, and commands for any other are refused. Null declares
    /// nothing: every command is taken, and <see cref="Requested"/> picks what it obeys.
    /// </summary>
    protected SensorDevice(DeviceClientOptions client, TimeSpan interval, string measurement, string? switchName, ILoggerFactory? loggerFactory,
        Action<string>? say)
    {
        if (switchName is not null)
        {
            client.Switches ??= [switchName];
        }
        _interval = interval;
        _measurement = measurement;
        _say = say ?? (_ => { });
        Logger = (loggerFactory ?? Microsoft.Extensions.Logging.Abstractions.NullLoggerFactory.Instance).CreateLogger(GetType());
        Client = new DeviceClient(client, ApplyCommandAsync, loggerFactory);
        Client.Commands.Applying = command =>
        {
            // The lesson's line shows what the lesson sends; an ordered command's id and seq are bookkeeping, for the log.
            _say($"Message received: {LessonText(command)}");
            if (command.Ordered)
            {
                Logger.LogDebug("Device {DeviceId} applies ordered command {Command}", Client.Id, command);
            }
        };
        Client.Fallback.Changed += mode =>
        {
            _say(mode == DeviceMode.Local ? $"No word from the server: deciding locally ({DescribeLocalRule()})" : "The server decides again");
            if (mode == DeviceMode.Local && _lastReading is { } reading)
            {
                // Decide on the last reading now rather than an interval later.
                _ = Task.Run(() => DecideLocallyAsync(reading, CancellationToken.None).AsTask());
            }
        };
    }

    /// <summary>The device's connection, telemetry stream, command receiver and mode.</summary>
    public DeviceClient Client { get; }

    /// <summary>For the device type's own log lines.</summary>
    protected ILogger Logger { get; }

    /// <summary>
    /// The longest the first reading waits for the first connection; <see cref="Timeout.InfiniteTimeSpan"/> waits until
    /// connected (a device whose broker runs in the same process, which comes up or stops the process).
    /// </summary>
    public TimeSpan FirstConnectionWait { get; init; } = TimeSpan.FromSeconds(2);

    /// <summary>
    /// Connects, subscribes to its commands and sends readings until <paramref name="stopping"/> fires. The first
    /// reading waits for the first connection, up to <see cref="FirstConnectionWait"/>, as the lesson's device connects
    /// before its loop. Taken while the connection was still being made, it went to the offline policy, and every start
    /// of <c>nightlight up</c> said the device was offline and had dropped a reading. A broker that does not answer in
    /// that time does not hold the readings back.
    /// </summary>
    public async Task RunAsync(CancellationToken stopping)
    {
        Client.Start();
        try
        {
            await Client.WaitConnectedAsync(stopping).WaitAsync(FirstConnectionWait, stopping).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            // Still connecting: readings start now, and the offline policy decides what becomes of them.
        }
        catch (OperationCanceledException) when (stopping.IsCancellationRequested)
        {
            return;
        }
        await DeviceClient.RunPeriodicallyAsync(_interval, TickAsync, stopping).ConfigureAwait(false);
    }

    /// <summary>A command as the lesson writes it: only the switches it sets, <c>{"led_on": false}</c>.</summary>
    public static string LessonText(CommandMessage command) => new CommandMessage(command.LedOn, command.HeatingOn).ToString();

    /// <summary>Reads the sensor; null skips this reading (the hardware did not answer).</summary>
    protected abstract ValueTask<double?> ReadAsync(CancellationToken cancellationToken);

    /// <summary>The actuator state a server command asks for, or null when the command is not for this device type.</summary>
    protected abstract bool? Requested(CommandMessage command);

    /// <summary>The device's own decision from a reading, used while it decides locally.</summary>
    protected abstract bool LocalRule(double reading);

    /// <summary>The local rule in words, for the line the device says when it starts deciding alone.</summary>
    protected abstract string DescribeLocalRule();

    /// <summary>Switches the actuator.</summary>
    protected abstract ValueTask SwitchAsync(bool on, CancellationToken cancellationToken);

    async ValueTask TickAsync(CancellationToken stopping)
    {
        if (await ReadAsync(stopping).ConfigureAwait(false) is not { } reading)
        {
            return;
        }
        _lastReading = reading;
        // The lesson's line, said before the publish leaves, as the lesson's device does: in one process the server's
        // answer then always comes after it. It shows the reading itself; seq and ts are bookkeeping.
        _say($"Sending telemetry {{\"{_measurement}\": {Wire.FormatNumber(reading)}}}");
        await Client.SendAsync(_measurement, reading, stopping).ConfigureAwait(false);
        await DecideLocallyAsync(reading, stopping).ConfigureAwait(false);
    }

    async ValueTask DecideLocallyAsync(double reading, CancellationToken cancellationToken)
    {
        await _switching.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            // Checked under the lock: a server command that arrived meanwhile has switched back to cloud and wins.
            if (Client.Mode == DeviceMode.Local)
            {
                await SwitchAsync(LocalRule(reading), cancellationToken).ConfigureAwait(false);
            }
        }
        finally
        {
            _switching.Release();
        }
    }

    async ValueTask ApplyCommandAsync(CommandMessage command, CancellationToken cancellationToken)
    {
        if (Requested(command) is not { } on)
        {
            return;
        }
        await _switching.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            await SwitchAsync(on, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _switching.Release();
        }
    }

    /// <inheritdoc />
    public ValueTask DisposeAsync()
    {
        GC.SuppressFinalize(this);
        return Client.DisposeAsync();
    }
}

/// <summary>Settings of one nightlight device.</summary>
public sealed class NightlightDeviceOptions
{
    /// <summary>Time between telemetry messages. The lesson's 5 s by default.</summary>
    public TimeSpan Interval { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>Local rule: the LED goes on below this light level (0–1023), like the lesson before it went online. Default 300.</summary>
    public double Threshold { get; set; } = 300;
}

/// <summary>
/// The lesson's nightlight: reads its light sensor every interval, publishes <c>{"light": N, "seq": S, "ts": T}</c>
/// on <c>{id}/telemetry</c>, and switches its LED on each <c>{"led_on": ...}</c> from <c>{id}/commands</c>; deciding
/// locally, the LED is on below <see cref="NightlightDeviceOptions.Threshold"/>.
/// Owns the <see cref="DeviceClient"/> it creates; does not own the sensor or LED it is given.
/// </summary>
public sealed class NightlightDevice(DeviceClientOptions client, NightlightDeviceOptions options, ILightSensor sensor, ILed led,
    ILoggerFactory? loggerFactory = null, Action<string>? say = null) : SensorDevice(client, options.Interval, "light", CommandMessage.Led, loggerFactory, say)
{
    /// <inheritdoc />
    protected override async ValueTask<double?> ReadAsync(CancellationToken cancellationToken)
    {
        try
        {
            return await sensor.ReadAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is HttpRequestException or TimeoutException or IOException or System.Text.Json.JsonException
                                       or KeyNotFoundException or TaskCanceledException && !cancellationToken.IsCancellationRequested)
        {
            // Remote hardware (a CounterFit app) can be away for a while; skip this reading and try again next interval.
            Logger.LogWarning("Device {DeviceId} could not read its light sensor: {Error}", Client.Id, e.Message);
            return null;
        }
    }

    /// <inheritdoc />
    protected override bool? Requested(CommandMessage command) => command.LedOn;

    /// <inheritdoc />
    protected override bool LocalRule(double reading) => reading < options.Threshold;

    /// <inheritdoc />
    protected override string DescribeLocalRule() => $"LED on below {Wire.FormatNumber(options.Threshold)}";

    /// <inheritdoc />
    protected override async ValueTask SwitchAsync(bool on, CancellationToken cancellationToken)
    {
        try
        {
            await led.SetAsync(on, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is HttpRequestException or TimeoutException or IOException or TaskCanceledException && !cancellationToken.IsCancellationRequested)
        {
            Logger.LogWarning("Device {DeviceId} could not switch its LED: {Error}", Client.Id, e.Message);
        }
    }
}

/// <summary>Settings of one thermostat device.</summary>
public sealed class ThermostatDeviceOptions
{
    /// <summary>Time between temperature readings. Default 5 s.</summary>
    public TimeSpan Interval { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>Local rule: heating goes on below this temperature, °C. Default 20.</summary>
    public double SetPoint { get; set; } = 20;
}

/// <summary>
/// The lesson's thermostat, on the same SDK: publishes <c>{"temperature": 18.5, "seq": S, "ts": T}</c> on
/// <c>{id}/telemetry</c> and switches its heater on each <c>{"heating_on": ...}</c> from <c>{id}/commands</c>;
/// deciding locally, it heats below <see cref="ThermostatDeviceOptions.SetPoint"/>.
/// Owns the <see cref="DeviceClient"/> it creates; does not own the sensor or heater.
/// </summary>
public sealed class ThermostatDevice(DeviceClientOptions client, ThermostatDeviceOptions options, ITemperatureSensor sensor, IHeater heater,
    ILoggerFactory? loggerFactory = null, Action<string>? say = null)
    : SensorDevice(client, options.Interval, "temperature", CommandMessage.Heating, loggerFactory, say)
{
    /// <inheritdoc />
    protected override async ValueTask<double?> ReadAsync(CancellationToken cancellationToken) =>
        await sensor.ReadAsync(cancellationToken).ConfigureAwait(false);

    /// <inheritdoc />
    protected override bool? Requested(CommandMessage command) => command.HeatingOn;

    /// <inheritdoc />
    protected override bool LocalRule(double reading) => reading < options.SetPoint;

    /// <inheritdoc />
    protected override string DescribeLocalRule() => $"heating on below {Wire.FormatNumber(options.SetPoint)} °C";

    /// <inheritdoc />
    protected override ValueTask SwitchAsync(bool on, CancellationToken cancellationToken) => heater.SetAsync(on, cancellationToken);
}
