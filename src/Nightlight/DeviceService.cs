using System.Globalization;
using Microsoft.Extensions.Options;
using MQTTnet.Protocol;
using Nightlight.Device;
using Nightlight.Hardware;
using Nightlight.Mqtt;
using Nightlight.Protocol;

namespace Nightlight.Cli;

/// <summary>
/// Runs a device on the device SDK: the nightlight (light sensor and LED, virtual or CounterFit hardware) or the
/// thermostat (<c>--type thermostat</c>: temperature and heater). A number typed on standard input holds the
/// light at that level; <c>curve</c> goes back to the day/night curve.
/// </summary>
sealed class DeviceService(
    IOptions<DeviceHostOptions> options,
    IConfiguration configuration,
    ILoggerFactory loggerFactory,
    LessonOutput output,
    NightlightHardware hardware,
    TerminalPrompt prompt,
    BrokerStartSignal? brokerStart = null,
    Nightlight.Server.Commands.ManualOverrides? overrides = null) : MqttClientService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var o = options.Value;
        var say = o.Quiet ? LessonOutput.None : output;
        var who = $"device {o.Id}";
        var dataRoot = Path.GetFullPath(configuration["Data:Directory"] is { Length: > 0 } data ? data : "nightlight-data");
        var client = new DeviceClientOptions
        {
            Id = o.Id,
            DataDirectory = Path.Combine(dataRoot, "devices", o.Id),
            Offline = o.OfflinePolicy,
            TelemetryQos = o.Qos is { } qos ? (MqttQualityOfServiceLevel)qos : null,
            Outbox = new OutboxOptions { Sync = o.OutboxSync, MaxBytes = o.OutboxMegabytes * 1024 * 1024 },
            Connection = MqttConnectionOptions.From(o.Broker, Topics.DeviceClientId(o.Id), o.Protocol, o.Username, o.Password, brokerStart,
                useTls: o.Tls || !string.IsNullOrEmpty(o.CaFile) || !string.IsNullOrEmpty(o.CertificateFile),
                caFile: o.CaFile, clientCertificateFile: o.CertificateFile, clientKeyFile: o.KeyFile),
            Fallback = new LocalFallbackOptions
            {
                AfterDisconnected = DeviceHostOptions.Timeout(o.FallbackAfter),
                AfterSilence = DeviceHostOptions.Timeout(o.FallbackSilence),
            },
        };
        var interval = Durations.Parse(o.Interval, "Device:Interval");
        // With the broker in this process (nightlight up) the first reading waits for it: it comes up, or the process stops.
        var firstConnectionWait = brokerStart is null ? TimeSpan.FromSeconds(2) : Timeout.InfiniteTimeSpan;
        Action<string> line = text => say.Say(who, text);
        if (o.Type == "thermostat")
        {
            var room = new VirtualThermostat(o.Temperature ?? 18, hold: o.Temperature is not null);
            room.Switched += on => say.Say(who, on ? "Heating switched ON" : "Heating switched OFF");
            await using var thermostat = new ThermostatDevice(client, new ThermostatDeviceOptions { Interval = interval, SetPoint = o.SetPoint }, room, room, loggerFactory, line)
            {
                FirstConnectionWait = firstConnectionWait,
            };
            // A plain background thread: a console read cannot be cancelled, and must never hold up shutdown.
            new Thread(() => ReadTemperatureFromInput(who, say, room, stoppingToken)) { IsBackground = true, Name = "temperature-input" }.Start();
            await thermostat.RunAsync(stoppingToken);
            return;
        }
        await hardware.ConnectAsync(loggerFactory.CreateLogger<DeviceService>(), stoppingToken);
        var led = new LessonLed(hardware.Led, on => say.Say(who, on ? "LED switched ON  (it is dark)" : "LED switched OFF (it is light)"));
        if (o.Transport == "http")
        {
            new Thread(() => ReadLightFromInput(who, say, stoppingToken)) { IsBackground = true, Name = "light-input" }.Start();
            // --offline all: numbered readings kept on disk until the server says they are stored, as over MQTT.
            var keep = o.OfflinePolicy == OfflinePolicy.All;
            using var sequence = keep ? new SequenceCounter(Path.Combine(client.DataDirectory!, "telemetry.seq"), loggerFactory.CreateLogger<SequenceCounter>()) : null;
            using var outbox = keep ? new Outbox(Path.Combine(client.DataDirectory!, "outbox"), client.Outbox, loggerFactory.CreateLogger<Outbox>()) : null;
            using var overHttp = new HttpNightlight(new Uri(o.Server), o.Id, o.Username, o.Password, interval, hardware.Light, led,
                loggerFactory.CreateLogger<HttpNightlight>(), line, sequence, outbox);
            await overHttp.RunAsync(stoppingToken);
            return;
        }
        await using var device = new NightlightDevice(client, new NightlightDeviceOptions { Interval = interval, Threshold = o.Threshold }, hardware.Light, led, loggerFactory, line)
        {
            FirstConnectionWait = firstConnectionWait,
        };
        new Thread(() => ReadLightFromInput(who, say, stoppingToken)) { IsBackground = true, Name = "light-input" }.Start();
        await device.RunAsync(stoppingToken);
        if (o.OfflinePolicy == OfflinePolicy.All)
        {
            await DrainAsync(device.Client, loggerFactory.CreateLogger<DeviceService>(), client.DataDirectory!);
        }
    }

    /// <summary>How long a clean stop waits for kept readings to be stored before leaving them on disk for the next start.</summary>
    internal static readonly TimeSpan StopDrain = TimeSpan.FromSeconds(5);

    /// <summary>On a clean stop, gives the readings still kept a moment to be stored; says what stays on disk.</summary>
    internal static async Task DrainAsync(DeviceClient client, ILogger logger, string directory)
    {
        if (await client.WaitUntilSentAsync(StopDrain) is var left and > 0)
        {
            logger.LogWarning("Device {DeviceId} stops with {Count} readings not yet stored; they stay in {Directory} and are sent at its next start",
                client.Id, left, directory);
        }
    }

    void ReadTemperatureFromInput(string who, LessonOutput say, VirtualThermostat room, CancellationToken stoppingToken)
    {
        while (!stoppingToken.IsCancellationRequested && prompt.ReadLine() is { } line)
        {
            if (double.TryParse(line, NumberStyles.Float, CultureInfo.InvariantCulture, out var celsius) && celsius is >= -50 and <= 100)
            {
                room.Set(celsius);
                say.Say(who, $"Temperature set to {Wire.FormatNumber(celsius)}");
            }
            else if (line.Length > 0)
            {
                say.Say(who, $"Type a temperature from -50 to 100 °C (got '{TelemetryParser.Printable(line)}')");
            }
        }
    }

    void ReadLightFromInput(string who, LessonOutput say, CancellationToken stoppingToken)
    {
        while (!stoppingToken.IsCancellationRequested)
        {
            var line = prompt.ReadLine();
            if (line is null)
            {
                return; // End of input: keep running on the current light level.
            }
            if (line.Length == 0)
            {
                continue;
            }
            if (line.Equals("resume", StringComparison.OrdinalIgnoreCase))
            {
                // The server in this process (up) says "Override ended" itself.
                if (overrides is null || !overrides.End(options.Value.Id))
                {
                    say.Say(who, overrides is null ? "No server in this process; end an override where it was set"
                        : $"No override is active for {options.Value.Id}; the rule decides");
                }
            }
            else if (hardware.Board is null || !hardware.Board.TryGetSensor(VirtualBoard.LightPort, out var sensor))
            {
                say.Say(who, $"The light comes from the hardware at {hardware.Remote?.BaseAddress}; change it there");
            }
            else if (line.Equals("curve", StringComparison.OrdinalIgnoreCase))
            {
                sensor.Apply(sensor.Settings with { Mode = SensorMode.DayNight });
                say.Say(who, "Light follows the day/night curve");
            }
            else if (double.TryParse(line, NumberStyles.Float, CultureInfo.InvariantCulture, out var level) && level is >= 0 and <= 1023)
            {
                sensor.Set(level);
                say.Say(who, $"Light set to {Wire.FormatNumber(sensor.Settings.Value)}");
            }
            else
            {
                say.Say(who, $"Type a light level from 0 to 1023, or 'curve' (got '{TelemetryParser.Printable(line)}')");
            }
        }
    }
}

/// <summary>Says the lesson's line when the LED changes state, then passes the command on.</summary>
sealed class LessonLed(ILed inner, Action<bool> switched) : ILed
{
    bool? _on;

    public async ValueTask SetAsync(bool on, CancellationToken cancellationToken)
    {
        await inner.SetAsync(on, cancellationToken);
        if (_on != on)
        {
            _on = on;
            switched(on);
        }
    }
}
