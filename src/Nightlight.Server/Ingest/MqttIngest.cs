using System.Buffers;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using MQTTnet.Protocol;
using Nightlight.Mqtt;
using Nightlight.Protocol;
using Nightlight.Server.Commands;
using Nightlight.Server.Pipeline;
using Nightlight.Server.Storage;

namespace Nightlight.Server.Ingest;

/// <summary>
/// What the server reads from its broker: subscribes the <see cref="ServerLink"/> and routes each message by topic,
/// telemetry to the <see cref="ReadingPipeline"/>, acknowledgements to the <see cref="CommandSender"/>, presence to the registry.
/// </summary>
public sealed class MqttIngest(IOptions<ServerOptions> options, ServerLink link, ReadingPipeline pipeline, CommandSender commands,
    DeviceRegistry devices, TelemetryStoreWriter store, ServerMetrics metrics, ILoggerFactory loggerFactory) : MqttClientService
{
    readonly ServerOptions _options = options.Value;
    readonly ILogger<MqttIngest> _logger = loggerFactory.CreateLogger<MqttIngest>();
    readonly RejectionLog _rejections = new();
    readonly TaskCompletionSource _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>True while the server holds a connection to its broker.</summary>
    public bool IsConnected => link.Link.IsConnected;

    /// <summary>Completes once the server is connected and subscribed.</summary>
    public Task Ready => _ready.Task;

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var single = link.SingleDevice;
        await using var connection = link.Link;
        connection.MessageReceived = connection.ReceivesOnBrokerPath
            ? (topic, payload) => OnMessageAsync(topic, payload, fromGroupFeed: false, mayWait: false)
            : (topic, payload) => OnMessageAsync(topic, payload, fromGroupFeed: false);
        var telemetry = single is null ? Topics.AllTelemetry : Topics.Telemetry(single);
        if (link.Shared)
        {
            telemetry = Topics.Shared(_options.SharedSubscriptionGroup!, telemetry);
        }
        if (_options.IngestsFromAmqp)
        {
            telemetry = "commands only (telemetry from AMQP)";
        }
        else
        {
            // QoS 1 in a session the broker keeps (see ServerLink): readings published while this server is down wait
            // for it, and each is acknowledged only once stored (OnMessageAsync).
            await connection.SubscribeAsync(telemetry, MqttQualityOfServiceLevel.AtLeastOnce, stoppingToken);
        }
        // Acknowledgements and presence are not shared: every server keeps its registry whole and finds its own commands.
        await connection.SubscribeAsync(single is null ? Topics.AllAcks : Topics.Acks(single), MqttQualityOfServiceLevel.AtLeastOnce, stoppingToken);
        await connection.SubscribeAsync(single is null ? Topics.AllStatus : Topics.Status(single), MqttQualityOfServiceLevel.AtLeastOnce, stoppingToken);

        // Shared subscriptions split a group's sensors across servers; a second, unshared connection gives this
        // server every reading of its group sensors, for the group rules only (see docs/architecture.md).
        ManagedMqttConnection? feed = null;
        if (link.Shared && pipeline.HasGroups)
        {
            feed = new ManagedMqttConnection(link.ConnectionOptions($"nightlight_groups-{Guid.NewGuid():N}"[..26]),
                loggerFactory.CreateLogger<ManagedMqttConnection>());
            feed.MessageReceived = (topic, payload) => OnMessageAsync(topic, payload, fromGroupFeed: true);
            foreach (var sensor in pipeline.GroupSensors)
            {
                await feed.SubscribeAsync(Topics.Telemetry(sensor), MqttQualityOfServiceLevel.AtMostOnce, stoppingToken);
            }
        }
        pipeline.Start(stoppingToken);
        try
        {
            await connection.StartAsync(stoppingToken);
            if (feed is not null)
            {
                await feed.StartAsync(stoppingToken);
            }
            _logger.LogInformation("Server listening for {Topic} on {Broker}, {Rule}", telemetry, connection.Description, pipeline.RuleDescription);
            _logger.LogInformation("Server link to the broker: {Link}{Inline}", link.Reason,
                connection.ReceivesOnBrokerPath || Environment.GetEnvironmentVariable(ServerOptions.InlineCompletionsVariable) != "1"
                    ? "" : "; socket completions run on the socket thread (Server:InlineSocketCompletions)");
            _ready.TrySetResult();
            await Task.Delay(Timeout.Infinite, stoppingToken);
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
        }
        finally
        {
            if (feed is not null)
            {
                await feed.DisposeAsync();
            }
            await pipeline.CompleteAsync();
        }
    }

    /// <summary>
    /// One message from the broker: a reading goes to the pipeline (see <see cref="ReadingPipeline.OfferAsync"/> for
    /// <paramref name="mayWait"/>); acknowledgements and presence are handled here and never wait.
    /// </summary>
    Task OnMessageAsync(string topic, ReadOnlySequence<byte> payload, bool fromGroupFeed, bool mayWait = true) =>
        TryRead(topic, payload, fromGroupFeed, out var reading)
            ? pipeline.OfferAsync(reading, fromGroupFeed, mayWait, fromGroupFeed ? null : link.Link.DeferAcknowledgement())
            : Task.CompletedTask;

    /// <summary>Parses a message; true with a reading for the pipeline, false when it was handled here (or rejected).</summary>
    bool TryRead(string topic, ReadOnlySequence<byte> payload, bool fromGroupFeed, out TelemetryMessage reading)
    {
        reading = null!;
        if (!Topics.TryParseDeviceTopic(topic, out var deviceId, out var level))
        {
            metrics.TelemetryRejected();
            if (_rejections.ShouldLog(_logger)) _logger.LogWarning("Rejected a message on '{Topic}': not a {{id}}/telemetry topic with a valid device id", TelemetryParser.Printable(topic));
            return false;
        }
        var bytes = payload.IsSingleSegment ? payload.FirstSpan : payload.ToArray();
        switch (level)
        {
            case Topics.TelemetryLevel:
                if (!TelemetryParser.TryParse(deviceId, bytes, out reading, out var error))
                {
                    metrics.TelemetryRejected();
                    if (_rejections.ShouldLog(_logger)) _logger.LogWarning("Rejected telemetry from device {DeviceId}: {Problem}", deviceId, error);
                    return false;
                }
                if (!fromGroupFeed)
                {
                    metrics.TelemetryReceived(deviceId);
                }
                return true;
            case Topics.AcksLevel:
                if (CommandAck.TryParse(bytes, out var ack, out var ackError))
                {
                    commands.Acknowledge(deviceId, ack);
                }
                else
                {
                    _logger.LogWarning("Rejected acknowledgement from device {DeviceId}: {Problem}", deviceId, ackError);
                }
                break;
            case Topics.StatusLevel:
                // An empty payload clears a retained presence: the device is gone.
                var online = false;
                string? mode = null;
                IReadOnlyList<string>? switches = null;
                if (bytes.IsEmpty || Presence.TryParse(bytes, out online, out mode, out switches))
                {
                    devices.SetOnline(deviceId, online, DateTimeOffset.UtcNow, mode, switches);
                    store.DeviceChanged(deviceId);
                    if (online)
                    {
                        // Back after an outage (or a restart): it gets its desired state now, not at the next retry.
                        commands.DeviceBack(deviceId);
                    }
                }
                else
                {
                    _logger.LogWarning("Ignored presence from device {DeviceId}: expected {{\"online\": true|false}}", deviceId);
                }
                break;
            default:
                metrics.TelemetryRejected();
                _logger.LogWarning("Rejected a message on '{Topic}': not a topic this server reads", TelemetryParser.Printable(topic));
                break;
        }
        return false;
    }
}
