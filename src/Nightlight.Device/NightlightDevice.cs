using System.Buffers;
using Microsoft.Extensions.Logging;
using MQTTnet.Protocol;
using Nightlight.Protocol;

namespace Nightlight.Device;

/// <summary>Settings of one nightlight device.</summary>
public sealed class NightlightDeviceOptions
{
    /// <summary>Device id: one topic level (see <see cref="Topics.IsValidDeviceId"/>).</summary>
    public string Id { get; set; } = "";

    /// <summary>Time between telemetry messages. The lesson's 5 s by default.</summary>
    public TimeSpan Interval { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>QoS of telemetry. The lesson's 0 by default.</summary>
    public MqttQualityOfServiceLevel TelemetryQos { get; set; } = MqttQualityOfServiceLevel.AtMostOnce;
}

/// <summary>
/// The lesson's nightlight: reads its light sensor every interval, publishes <c>{"light": N}</c> on
/// <c>{id}/telemetry</c>, and switches its LED on each <c>{"led_on": ...}</c> from <c>{id}/commands</c>.
/// Does not own the connection, sensor or LED it is given.
/// </summary>
public sealed class NightlightDevice
{
    readonly NightlightDeviceOptions _options;
    readonly ManagedMqttConnection _connection;
    readonly ILightSensor _sensor;
    readonly ILed _led;
    readonly ILogger _logger;
    readonly Action<string> _say;
    long _badCommands;
    long _sent;

    /// <summary>Creates a device. <paramref name="say"/> receives the lesson-style lines a learner reads.</summary>
    public NightlightDevice(NightlightDeviceOptions options, ManagedMqttConnection connection, ILightSensor sensor, ILed led,
        ILogger logger, Action<string>? say = null)
    {
        if (!Topics.IsValidDeviceId(options.Id))
        {
            throw new ArgumentException($"'{options.Id}' is not a valid device id: 1–{Topics.MaxDeviceIdLength} characters, no '/', '+', '#', spaces or control characters.", nameof(options));
        }
        _options = options;
        _connection = connection;
        _sensor = sensor;
        _led = led;
        _logger = logger;
        _say = say ?? (_ => { });
        _connection.MessageReceived = OnMessageAsync;
    }

    /// <summary>Commands that could not be parsed and were ignored.</summary>
    public long BadCommands => Interlocked.Read(ref _badCommands);

    /// <summary>Telemetry messages handed to the broker.</summary>
    public long TelemetrySent => Interlocked.Read(ref _sent);

    /// <summary>Connects, subscribes to its commands and sends telemetry until <paramref name="stopping"/> fires.</summary>
    public async Task RunAsync(CancellationToken stopping)
    {
        await _connection.SubscribeAsync(Topics.Commands(_options.Id), MqttQualityOfServiceLevel.AtMostOnce, stopping).ConfigureAwait(false);
        await _connection.StartAsync(stopping).ConfigureAwait(false);
        using var timer = new PeriodicTimer(_options.Interval);
        do
        {
            await SendReadingAsync(stopping).ConfigureAwait(false);
        }
        while (await WaitAsync(timer, stopping).ConfigureAwait(false));
    }

    static async Task<bool> WaitAsync(PeriodicTimer timer, CancellationToken stopping)
    {
        try
        {
            return await timer.WaitForNextTickAsync(stopping).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            return false;
        }
    }

    async Task SendReadingAsync(CancellationToken stopping)
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
            _logger.LogWarning("Device {DeviceId} could not read its light sensor: {Error}", _options.Id, e.Message);
            return;
        }
        var payload = TelemetryWriter.Write(light);
        if (await _connection.TryPublishAsync(Topics.Telemetry(_options.Id), payload, _options.TelemetryQos, cancellationToken: stopping).ConfigureAwait(false))
        {
            Interlocked.Increment(ref _sent);
            _say($"Sending telemetry {System.Text.Encoding.UTF8.GetString(payload)}");
        }
        else
        {
            // The lesson's behaviour while offline: the reading is dropped, and we say so.
            _logger.LogWarning("Device {DeviceId} is offline; reading {Light} dropped", _options.Id, Wire.FormatNumber(light));
        }
    }

    async Task OnMessageAsync(string topic, ReadOnlySequence<byte> payload)
    {
        if (topic != Topics.Commands(_options.Id))
        {
            return;
        }
        var bytes = payload.IsSingleSegment ? payload.FirstSpan : payload.ToArray();
        if (!CommandMessage.TryParse(bytes, out var command, out var error))
        {
            Interlocked.Increment(ref _badCommands);
            _logger.LogWarning("Device {DeviceId} ignored a bad command: {Problem}", _options.Id, error);
            return;
        }
        _say($"Message received: {command}");
        try
        {
            await _led.SetAsync(command.LedOn, CancellationToken.None).ConfigureAwait(false);
        }
        catch (Exception e) when (e is HttpRequestException or TimeoutException or IOException or TaskCanceledException)
        {
            _logger.LogWarning("Device {DeviceId} could not switch its LED: {Error}", _options.Id, e.Message);
        }
    }
}
