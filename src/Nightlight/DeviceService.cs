using System.Globalization;
using Microsoft.Extensions.Options;
using MQTTnet.Protocol;
using Nightlight.Device;
using Nightlight.Protocol;

namespace Nightlight.Cli;

/// <summary>
/// Runs a virtual device on the device SDK: the nightlight (light sensor, LED) or the thermostat (temperature,
/// heater). A number typed on standard input holds the light (or temperature) at that level; <c>curve</c> goes back
/// to the day/night curve.
/// </summary>
sealed class DeviceService(
    IOptions<DeviceHostOptions> options,
    IConfiguration configuration,
    ILoggerFactory loggerFactory,
    LessonOutput output,
    VirtualLightSensor sensor,
    VirtualLed led,
    BrokerStartSignal? brokerStart = null) : Nightlight.Server.MqttClientService
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
            Connection = new MqttConnectionOptions
            {
                Brokers = ConnectionSettings.ParseBrokers(o.Broker),
                ClientId = Topics.DeviceClientId(o.Id),
                Protocol = ConnectionSettings.ParseProtocol(o.Protocol),
                WaitBeforeConnecting = brokerStart is null ? null : ct => brokerStart.Started.WaitAsync(ct),
            },
        };
        var interval = Durations.Parse(o.Interval, "Device:Interval");
        Action<string> line = text => say.Say(who, text);
        if (o.Type == "thermostat")
        {
            var room = new VirtualThermostat(o.Temperature ?? 18, hold: o.Temperature is not null);
            room.Switched += on => say.Say(who, on ? "Heating switched ON" : "Heating switched OFF");
            await using var thermostat = new ThermostatDevice(client, new ThermostatDeviceOptions { Interval = interval }, room, room, loggerFactory, line);
            StartInputThread(who, say, value => room.Set(value), "temperature", -50, 100, stoppingToken);
            await thermostat.RunAsync(stoppingToken);
            return;
        }
        led.Switched += on => say.Say(who, on ? "LED switched ON  (it is dark)" : "LED switched OFF (it is light)");
        await using var device = new NightlightDevice(client, new NightlightDeviceOptions { Interval = interval }, sensor, led, loggerFactory, line);
        StartInputThread(who, say, value => sensor.Set(value), "light level", 0, 1023, stoppingToken);
        await device.RunAsync(stoppingToken);
    }

    void StartInputThread(string who, LessonOutput say, Action<double> set, string what, double min, double max, CancellationToken stoppingToken)
    {
        // A plain background thread: a console read cannot be cancelled, and must never hold up shutdown.
        new Thread(() => ReadInput(who, say, set, what, min, max, stoppingToken)) { IsBackground = true, Name = "device-input" }.Start();
    }

    void ReadInput(string who, LessonOutput say, Action<double> set, string what, double min, double max, CancellationToken stoppingToken)
    {
        while (!stoppingToken.IsCancellationRequested)
        {
            var line = Console.In.ReadLine();
            if (line is null)
            {
                return; // End of input: keep running on the current level.
            }
            line = line.Trim();
            if (line.Length == 0)
            {
                continue;
            }
            if (line.Equals("curve", StringComparison.OrdinalIgnoreCase) && what == "light level")
            {
                sensor.FollowCurve();
                say.Say(who, "Light follows the day/night curve");
            }
            else if (double.TryParse(line, NumberStyles.Float, CultureInfo.InvariantCulture, out var level) && level >= min && level <= max)
            {
                set(level);
                say.Say(who, what == "light level" ? $"Light set to {Wire.FormatNumber(sensor.FixedLevel ?? level)}" : $"Temperature set to {Wire.FormatNumber(level)}");
            }
            else
            {
                say.Say(who, $"Type a {what} from {Wire.FormatNumber(min)} to {Wire.FormatNumber(max)}{(what == "light level" ? ", or 'curve'" : "")} (got '{TelemetryParser.Printable(line)}')");
            }
        }
    }
}
