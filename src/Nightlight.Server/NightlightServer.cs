using System.Buffers;
using System.Threading.Channels;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using MQTTnet.Protocol;
using Nightlight.Device;
using Nightlight.Protocol;

namespace Nightlight.Server;

/// <summary>
/// The lesson's server. A telemetry message enters at <see cref="OnMessageAsync"/>, is parsed once into a
/// <see cref="TelemetryMessage"/>, flows through a bounded channel to the rule, and its command leaves at
/// <see cref="AnswerAsync"/>. A full channel slows the MQTT client down instead of dropping readings.
/// </summary>
public sealed class NightlightServer : MqttClientService
{
    readonly ServerOptions _options;
    readonly ILogger<NightlightServer> _logger;
    readonly ILoggerFactory _loggerFactory;
    readonly ServerMetrics _metrics;
    readonly LessonOutput _output;
    readonly Channel<TelemetryMessage> _readings;
    readonly LessonRule _rule;
    ManagedMqttConnection? _connection;

    readonly BrokerStartSignal? _brokerStart;

    public NightlightServer(IOptions<ServerOptions> options, ILoggerFactory loggerFactory, ServerMetrics metrics, LessonOutput output,
        BrokerStartSignal? brokerStart = null)
    {
        _brokerStart = brokerStart;
        _options = options.Value;
        _loggerFactory = loggerFactory;
        _logger = loggerFactory.CreateLogger<NightlightServer>();
        _metrics = metrics;
        _output = _options.Quiet ? LessonOutput.None : output;
        _rule = new LessonRule(_options.Threshold);
        _readings = Channel.CreateBounded<TelemetryMessage>(new BoundedChannelOptions(_options.QueueCapacity)
        {
            SingleReader = true,
            SingleWriter = true,
            FullMode = BoundedChannelFullMode.Wait,
        });
    }

    /// <summary>True while the server holds a connection to its broker.</summary>
    public bool IsConnected => _connection?.IsConnected ?? false;

    /// <summary>Completes once the server is connected and subscribed.</summary>
    public Task Ready => _ready.Task;

    readonly TaskCompletionSource _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var single = string.IsNullOrEmpty(_options.Id) ? null : _options.Id;
        if (single is not null && !Topics.IsValidDeviceId(single))
        {
            throw new OptionsValidationException(ServerOptions.Section, typeof(ServerOptions),
                [$"Server:Id '{single}' is not a valid device id"]);
        }
        var connectionOptions = new MqttConnectionOptions
        {
            Brokers = ConnectionSettings.ParseBrokers(_options.Broker),
            ClientId = single is null ? $"nightlight_server-{Guid.NewGuid():N}"[..26] : Topics.ServerClientId(single),
            Protocol = ConnectionSettings.ParseProtocol(_options.Protocol),
            Username = string.IsNullOrEmpty(_options.Username) ? null : _options.Username,
            Password = _options.Password,
            WaitBeforeConnecting = _brokerStart is null ? null : ct => _brokerStart.Started.WaitAsync(ct),
        };
        await using var connection = new ManagedMqttConnection(connectionOptions, _loggerFactory.CreateLogger<ManagedMqttConnection>());
        _connection = connection;
        connection.MessageReceived = OnMessageAsync;
        await connection.SubscribeAsync(single is null ? Topics.AllTelemetry : Topics.Telemetry(single), MqttQualityOfServiceLevel.AtMostOnce, stoppingToken);
        var consumer = Task.Run(() => ConsumeAsync(connection, stoppingToken), CancellationToken.None);
        try
        {
            await connection.StartAsync(stoppingToken);
            _logger.LogInformation("Server listening for {Topic} on {Broker}, threshold {Threshold}",
                single is null ? Topics.AllTelemetry : Topics.Telemetry(single), connection.CurrentBroker, _options.Threshold);
            _ready.TrySetResult();
            await Task.Delay(Timeout.Infinite, stoppingToken);
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
        }
        finally
        {
            _readings.Writer.TryComplete();
            await consumer;
        }
    }

    async Task OnMessageAsync(string topic, ReadOnlySequence<byte> payload)
    {
        if (!Topics.TryParseTelemetryTopic(topic, out var deviceId))
        {
            _metrics.TelemetryRejected();
            _logger.LogWarning("Rejected a message on '{Topic}': not a {{id}}/telemetry topic with a valid device id", TelemetryParser.Printable(topic));
            return;
        }
        var bytes = payload.IsSingleSegment ? payload.FirstSpan : payload.ToArray();
        if (!TelemetryParser.TryParse(deviceId, bytes, out var reading, out var error))
        {
            _metrics.TelemetryRejected();
            _logger.LogWarning("Rejected telemetry from device {DeviceId}: {Problem}", deviceId, error);
            return;
        }
        _metrics.TelemetryReceived(deviceId);
        await _readings.Writer.WriteAsync(reading);
    }

    async Task ConsumeAsync(ManagedMqttConnection connection, CancellationToken stoppingToken)
    {
        await foreach (var reading in _readings.Reader.ReadAllAsync(CancellationToken.None))
        {
            if (_rule.Decide(reading) is not { } command)
            {
                continue;
            }
            await AnswerAsync(connection, reading, command, stoppingToken);
        }
    }

    async Task AnswerAsync(ManagedMqttConnection connection, TelemetryMessage reading, CommandMessage command, CancellationToken stoppingToken)
    {
        var who = string.IsNullOrEmpty(_options.Id) ? $"server → {reading.DeviceId}" : "server";
        _output.Say(who, $"Message received: {reading.ToLessonJson()}");
        _output.Say(who, $"Sending message: {command}");
        if (await connection.TryPublishAsync(Topics.Commands(reading.DeviceId), command.ToPayload(), cancellationToken: stoppingToken))
        {
            _metrics.CommandSent(reading.DeviceId, command.ToString());
        }
        else if (!stoppingToken.IsCancellationRequested)
        {
            _metrics.CommandFailed();
            _logger.LogWarning("Command {Command} for device {DeviceId} not sent: no connection to the broker", command, reading.DeviceId);
        }
    }
}
