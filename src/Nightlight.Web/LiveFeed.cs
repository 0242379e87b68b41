using System.Buffers;
using System.Text;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using MQTTnet.Protocol;
using Nightlight.Mqtt;
using Nightlight.Protocol;

namespace Nightlight.Web;

/// <summary>
/// The pages' own view of the broker: one MQTT subscription to every device's telemetry, commands and presence,
/// independent of the server's internals (in the broker's own process, an in-process link with the same filters:
/// <see cref="IBrokerLink"/>, <c>Server:InProcess</c>). Telemetry is parsed by the one <see cref="TelemetryParser"/>; bad
/// messages are counted and logged in one line, never shown.
/// </summary>
public sealed class LiveFeed(
    IOptions<DashboardOptions> options,
    LiveDevices devices,
    LiveEvents events,
    ILoggerFactory loggerFactory,
    BrokerStartSignal? brokerStart = null,
    Nightlight.Server.Ingest.Http.HttpDeviceEvents? httpDevices = null,
    IInProcessBroker? inProcess = null) : MqttClientService
{
    readonly ILogger _logger = loggerFactory.CreateLogger<LiveFeed>();
    long _badMessages;

    /// <summary>Messages that could not be parsed and were left out.</summary>
    public long BadMessages => Interlocked.Read(ref _badMessages);

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var connectionOptions = MqttConnectionOptions.From(options.Value.Broker, $"nightlight_web-{Guid.NewGuid():N}"[..23],
            username: options.Value.Username, password: options.Value.Password, brokerStart: brokerStart);
        // OnMessageAsync never waits, so it can run on the broker's receive path.
        await using IBrokerLink connection = inProcess is not null && options.Value.InProcess
            ? inProcess.CreateLink(connectionOptions.ClientId)
            : new MqttBrokerLink(new ManagedMqttConnection(connectionOptions, loggerFactory.CreateLogger<ManagedMqttConnection>()));
        connection.MessageReceived = OnMessageAsync;
        foreach (var filter in DashboardOptions.Subscriptions)
        {
            await connection.SubscribeAsync(filter, MqttQualityOfServiceLevel.AtMostOnce, stoppingToken);
        }
        // HTTP devices never pass the broker: the server in this process tells what they send and are sent.
        if (httpDevices is not null)
        {
            httpDevices.Reading += ShowReading;
            httpDevices.Command += ShowCommand;
        }
        try
        {
            await connection.StartAsync(stoppingToken);
            _logger.LogInformation("Dashboard watching {Broker}", connection.Description);
            await Task.Delay(Timeout.Infinite, stoppingToken);
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
        }
        finally
        {
            if (httpDevices is not null)
            {
                httpDevices.Reading -= ShowReading;
                httpDevices.Command -= ShowCommand;
            }
        }
    }

    void ShowReading(TelemetryMessage message)
    {
        if (devices.Add(message) is { } ts && events.Listeners > 0)
        {
            events.Publish("reading", new { id = message.DeviceId, ts, message.Seq, Measurements = (IReadOnlyDictionary<string, double>)message.Measurements });
        }
    }

    void ShowCommand(string id, CommandMessage command)
    {
        if (devices.Command(id, command) && events.Listeners > 0)
        {
            events.Publish("command", new { id, ts = DateTimeOffset.UtcNow, ledOn = command.LedOn });
        }
    }

    Task OnMessageAsync(string topic, ReadOnlySequence<byte> payload)
    {
        if (!Topics.TryParseDeviceTopic(topic, out var id, out var level))
        {
            return Task.CompletedTask;
        }
        var bytes = payload.IsSingleSegment ? payload.FirstSpan : payload.ToArray();
        switch (level)
        {
            case Topics.TelemetryLevel:
                if (!TelemetryParser.TryParse(id, bytes, out var message, out var error))
                {
                    Bad(id, "telemetry", error);
                }
                else
                {
                    ShowReading(message);
                }
                break;
            case Topics.CommandsLevel:
                if (!CommandMessage.TryParse(bytes, out var command, out error))
                {
                    Bad(id, "command", error);
                }
                else
                {
                    ShowCommand(id, command);
                }
                break;
            case Topics.StatusLevel:
                var text = TelemetryParser.Printable(Encoding.UTF8.GetString(bytes), 200);
                var online = PresenceText(text);
                if (devices.Status(id, text, online))
                {
                    Presence.TryParse(bytes, out _, out var mode);
                    events.Publish("status", new { id, ts = DateTimeOffset.UtcNow, status = text, online, mode });
                }
                break;
        }
        return Task.CompletedTask;
    }

    /// <summary>Reads presence from <c>online</c>/<c>offline</c>, alone or as a JSON field; null when it says neither.</summary>
    static bool? PresenceText(string text)
    {
        if (text.Contains("offline", StringComparison.OrdinalIgnoreCase) || text.Contains("\"online\": false", StringComparison.OrdinalIgnoreCase)
            || text.Contains("\"online\":false", StringComparison.OrdinalIgnoreCase))
        {
            return false;
        }
        return text.Contains("online", StringComparison.OrdinalIgnoreCase) ? true : null;
    }

    void Bad(string id, string what, string error)
    {
        Interlocked.Increment(ref _badMessages);
        _logger.LogWarning("Dashboard left out a bad {What} from device {DeviceId}: {Problem}", what, id, error);
    }
}

/// <summary>What the dashboard watches: the broker (the server's, else the device's) and the threshold line.</summary>
public sealed class DashboardOptions
{
    /// <summary>Topics the dashboard subscribes to.</summary>
    public static readonly string[] Subscriptions = [Topics.AllTelemetry, "+/" + Topics.CommandsLevel, Topics.AllStatus];

    /// <summary>In the embedded broker's process, read it in memory rather than over MQTT (<c>Server:InProcess</c>).</summary>
    public bool InProcess { get; set; } = true;

    /// <summary>Broker address, from <c>Server:Broker</c> or <c>Device:Broker</c>.</summary>
    public string Broker { get; set; } = "mqtt://localhost:1883";

    /// <summary>The server's threshold (<c>Server:Threshold</c>), drawn as a line on every chart.</summary>
    public double Threshold { get; set; } = 300;

    /// <summary>The in-process device's id (<c>Device:Id</c>), if this process runs one.</summary>
    public string? LocalDeviceId { get; set; }

    /// <summary>User name for a broker that authenticates (<c>Server:Username</c>); null for anonymous.</summary>
    public string? Username { get; set; }

    /// <summary>Password for <see cref="Username"/> (<c>Server:Password</c>). Never logged.</summary>
    public string? Password { get; set; }
}
