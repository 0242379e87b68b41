using System.Globalization;
using Microsoft.Extensions.Options;
using Nightlight.Device;
using Nightlight.Protocol;

namespace Nightlight.Cli;

/// <summary>
/// Runs the virtual nightlight: its connection, light sensor and LED. A number typed on standard input holds the
/// light at that level; <c>curve</c> goes back to the day/night curve.
/// </summary>
sealed class DeviceService(
    IOptions<DeviceHostOptions> options,
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
        var connectionOptions = new MqttConnectionOptions
        {
            Brokers = ConnectionSettings.ParseBrokers(o.Broker),
            ClientId = Topics.DeviceClientId(o.Id),
            Protocol = ConnectionSettings.ParseProtocol(o.Protocol),
            Username = string.IsNullOrEmpty(o.Username) ? null : o.Username,
            Password = o.Password,
            WaitBeforeConnecting = brokerStart is null ? null : ct => brokerStart.Started.WaitAsync(ct),
        };
        await using var connection = new ManagedMqttConnection(connectionOptions, loggerFactory.CreateLogger<ManagedMqttConnection>());
        led.Switched += on => say.Say(who, on ? "LED switched ON  (it is dark)" : "LED switched OFF (it is light)");
        var device = new NightlightDevice(
            new NightlightDeviceOptions { Id = o.Id, Interval = Durations.Parse(o.Interval, "Device:Interval") },
            connection, sensor, led, loggerFactory.CreateLogger<NightlightDevice>(), line => say.Say(who, line));
        // A plain background thread: a console read cannot be cancelled, and must never hold up shutdown.
        new Thread(() => ReadLightFromInput(who, say, stoppingToken)) { IsBackground = true, Name = "light-input" }.Start();
        try
        {
            await device.RunAsync(stoppingToken);
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
        }
    }

    void ReadLightFromInput(string who, LessonOutput say, CancellationToken stoppingToken)
    {
        while (!stoppingToken.IsCancellationRequested)
        {
            var line = Console.In.ReadLine();
            if (line is null)
            {
                return; // End of input: keep running on the current light level.
            }
            line = line.Trim();
            if (line.Length == 0)
            {
                continue;
            }
            if (line.Equals("curve", StringComparison.OrdinalIgnoreCase))
            {
                sensor.FollowCurve();
                say.Say(who, "Light follows the day/night curve");
            }
            else if (double.TryParse(line, NumberStyles.Float, CultureInfo.InvariantCulture, out var level) && level is >= 0 and <= 1023)
            {
                sensor.Set(level);
                say.Say(who, $"Light set to {Wire.FormatNumber(sensor.FixedLevel ?? level)}");
            }
            else
            {
                say.Say(who, $"Type a light level from 0 to 1023, or 'curve' (got '{TelemetryParser.Printable(line)}')");
            }
        }
    }
}
