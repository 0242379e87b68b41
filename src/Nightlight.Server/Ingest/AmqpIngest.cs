using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Nightlight.Mqtt;
using Nightlight.Protocol;
using Nightlight.Server.Pipeline;
using RabbitMQ.Client;
using RabbitMQ.Client.Events;

namespace Nightlight.Server.Ingest;

/// <summary>
/// Telemetry from RabbitMQ by AMQP, for brokers whose MQTT has no shared subscriptions. RabbitMQ's MQTT plugin
/// publishes <c>{id}/telemetry</c> to <see cref="AmqpIngestOptions.Exchange"/> with routing key <c>{id}.telemetry</c>;
/// every server consumes one shared queue bound to <c>*.telemetry</c>, so each reading goes to one server (competing
/// consumers). A reading is acknowledged only after it is in the store: a server killed mid-run hands its unacknowledged
/// readings back to the queue and another server stores them (the store skips a device+seq it already has).
/// Group sensors' readings also go to a single-active-consumer queue: one server at a time decides group rules.
/// Commands, acknowledgements and presence stay on MQTT (<see cref="MqttIngest"/>).
/// </summary>
public sealed class AmqpIngest(IOptions<ServerOptions> server, IOptions<AmqpIngestOptions> options, MqttIngest mqtt, ReadingPipeline pipeline,
    ServerMetrics metrics, ILogger<AmqpIngest> logger) : MqttClientService
{
    readonly AmqpIngestOptions _options = options.Value;

    // Set once the broker cancelled the consumer: from then on a failed declare is retried rather than fatal.
    volatile bool _queueWentAway;

    /// <summary>True once the queues are declared and consumed.</summary>
    public bool IsConsuming { get; private set; }

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        if (!server.Value.IngestsFromAmqp)
        {
            return;
        }
        try
        {
            await mqtt.Ready.WaitAsync(stoppingToken);
            // RunAsync returns when the broker took the queue away; declared and consumed again, it comes back.
            var failures = 0;
            while (true)
            {
                try
                {
                    await RunAsync(stoppingToken);
                    failures = 0;
                }
                catch (Exception e) when (e is not OperationCanceledException && _queueWentAway)
                {
                    // Declaring fails while the queue's node is still down: one line, then quiet until it works.
                    if (failures++ == 0)
                    {
                        logger.LogWarning("AMQP queue {Queue} cannot be declared yet: {Error}", _options.Queue, (e.InnerException ?? e).Message);
                    }
                }
                await Task.Delay(QueueRetry, stoppingToken);
            }
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
        }
    }

    /// <summary>Time between a queue that went away and declaring it again.</summary>
    static readonly TimeSpan QueueRetry = TimeSpan.FromSeconds(2);

    async Task RunAsync(CancellationToken stoppingToken)
    {
        var endpoints = _options.Endpoints;
        var factory = new ConnectionFactory
        {
            // Credentials and virtual host come from the first address; the others are more nodes of the same cluster.
            Uri = endpoints[0],
            AutomaticRecoveryEnabled = true,
            TopologyRecoveryEnabled = true,
            NetworkRecoveryInterval = TimeSpan.FromSeconds(1),
        };
        var single = string.IsNullOrEmpty(server.Value.Id) ? null : server.Value.Id;
        await using var connection = await ConnectAsync(factory, endpoints, stoppingToken);

        await using var telemetry = await connection.CreateChannelAsync(cancellationToken: stoppingToken);
        await telemetry.BasicQosAsync(0, _options.Prefetch, false, stoppingToken);
        await telemetry.QueueDeclareAsync(_options.Queue, durable: true, exclusive: false, autoDelete: false,
            new Dictionary<string, object?> { ["x-queue-type"] = _options.QueueType }, cancellationToken: stoppingToken);
        await telemetry.QueueBindAsync(_options.Queue, _options.Exchange, RoutingKey(single ?? "*"), cancellationToken: stoppingToken);
        var acks = Channel.CreateUnbounded<ulong>(new UnboundedChannelOptions { SingleReader = true });
        var telemetryAcks = Task.Run(() => AcknowledgeAsync(telemetry, acks.Reader), CancellationToken.None);
        var consumer = new AsyncEventingBasicConsumer(telemetry);
        consumer.ReceivedAsync += (_, delivery) => OnDeliveryAsync(delivery, fromGroupFeed: false, acks.Writer, stoppingToken);
        // The broker cancels a consumer whose queue is deleted or whose (classic) queue's node went down: without a line
        // here the server would sit connected and idle while readings pile up elsewhere or are dropped.
        var gone = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        consumer.UnregisteredAsync += (_, _) =>
        {
            gone.TrySetResult("the broker cancelled this server's consumer");
            return Task.CompletedTask;
        };
        // A lost node is not left to the client's automatic recovery, which can keep trying the node that died: the
        // server starts over on any node of the list, declares the queue and says so in its log.
        connection.ConnectionShutdownAsync += (_, e) =>
        {
            if (e.Initiator != ShutdownInitiator.Application)
            {
                gone.TrySetResult($"the connection to its node was lost: {e.ReplyText}");
            }
            return Task.CompletedTask;
        };
        await telemetry.BasicConsumeAsync(_options.Queue, autoAck: false, consumer, stoppingToken);

        // Group rules need every reading of their sensors in one place: a single-active-consumer queue gives them all to
        // one server, and to the next one when it goes. Not durable: group state starts afresh with the servers.
        IChannel? groups = null;
        var groupAcks = Channel.CreateUnbounded<ulong>(new UnboundedChannelOptions { SingleReader = true });
        Task? groupAcking = null;
        var sensors = pipeline.GroupSensors.ToList();
        if (sensors.Count > 0)
        {
            groups = await connection.CreateChannelAsync(cancellationToken: stoppingToken);
            await groups.BasicQosAsync(0, _options.Prefetch, false, stoppingToken);
            await groups.QueueDeclareAsync(_options.GroupQueue, durable: false, exclusive: false, autoDelete: true,
                new Dictionary<string, object?> { ["x-single-active-consumer"] = true }, cancellationToken: stoppingToken);
            foreach (var sensor in sensors)
            {
                await groups.QueueBindAsync(_options.GroupQueue, _options.Exchange, RoutingKey(sensor), cancellationToken: stoppingToken);
            }
            groupAcking = Task.Run(() => AcknowledgeAsync(groups, groupAcks.Reader), CancellationToken.None);
            var groupConsumer = new AsyncEventingBasicConsumer(groups);
            groupConsumer.ReceivedAsync += (_, delivery) => OnDeliveryAsync(delivery, fromGroupFeed: true, groupAcks.Writer, stoppingToken);
            await groups.BasicConsumeAsync(_options.GroupQueue, autoAck: false, groupConsumer, stoppingToken);
        }
        IsConsuming = true;
        logger.LogInformation("Server consuming telemetry from AMQP queue {Queue} on {Broker} (prefetch {Prefetch}{Groups})", _options.Queue,
            connection.Endpoint.ToString(), _options.Prefetch, groups is null ? "" : $", group sensors from {_options.GroupQueue}");
        try
        {
            // Not every way a queue goes ends in a cancel notification, so the queue is also looked up now and then.
            while (!gone.Task.IsCompleted)
            {
                await Task.WhenAny(gone.Task, Task.Delay(QueueCheck, stoppingToken));
                stoppingToken.ThrowIfCancellationRequested();
                if (!gone.Task.IsCompleted && connection.IsOpen && !await QueueExistsAsync(connection, stoppingToken))
                {
                    gone.TrySetResult("it no longer exists");
                }
            }
            _queueWentAway = true;
            logger.LogError("AMQP queue {Queue} is gone ({Why}: deleted, or its node is down); readings routed to it are not stored until it is back. " +
                "Declaring it again every {Retry} s", _options.Queue, await gone.Task, QueueRetry.TotalSeconds);
        }
        finally
        {
            IsConsuming = false;
            // Unacknowledged readings go back to the queue when the connection closes: other servers take them.
            acks.Writer.TryComplete();
            groupAcks.Writer.TryComplete();
            await telemetryAcks;
            if (groupAcking is not null)
            {
                await groupAcking;
            }
            if (groups is not null)
            {
                await groups.DisposeAsync();
            }
        }
    }

    /// <summary>How often the consumed queue is looked up.</summary>
    static readonly TimeSpan QueueCheck = TimeSpan.FromSeconds(3);

    /// <summary>False only when the broker says the queue does not exist (404); any other failure is not the queue's.</summary>
    async Task<bool> QueueExistsAsync(IConnection connection, CancellationToken stoppingToken)
    {
        try
        {
            await using var channel = await connection.CreateChannelAsync(cancellationToken: stoppingToken);
            await channel.QueueDeclarePassiveAsync(_options.Queue, stoppingToken);
            return true;
        }
        catch (RabbitMQ.Client.Exceptions.OperationInterruptedException e) when (e.ShutdownReason?.ReplyCode == 404)
        {
            return false;
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            return true;
        }
    }

    async Task<IConnection> ConnectAsync(ConnectionFactory factory, IReadOnlyList<Uri> endpoints, CancellationToken stoppingToken)
    {
        var tcp = endpoints.Select(u => new AmqpTcpEndpoint(u)).ToList();
        for (var attempt = 1; ; attempt++)
        {
            try
            {
                return await factory.CreateConnectionAsync(tcp, $"nightlight-server-{Environment.ProcessId}", stoppingToken);
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                // Automatic recovery covers a connection once made; the first one is ours to retry.
                logger.LogWarning("Cannot reach AMQP broker {Brokers}: {Error}", string.Join(", ", endpoints.Select(u => $"{u.Host}:{u.Port}")),
                    (e.InnerException ?? e).Message);
                await Task.Delay(TimeSpan.FromSeconds(Math.Min(attempt, 5)), stoppingToken);
            }
        }
    }

    /// <summary>
    /// Routing key of <c>{id}/telemetry</c> as the MQTT plugin writes it: MQTT's '/' becomes AMQP's '.', and a '.' in
    /// the device id becomes '/'.
    /// </summary>
    public static string RoutingKey(string deviceId) => deviceId.Replace('.', '/') + "." + Topics.TelemetryLevel;

    async Task OnDeliveryAsync(BasicDeliverEventArgs delivery, bool fromGroupFeed, ChannelWriter<ulong> acks, CancellationToken stoppingToken)
    {
        var tag = delivery.DeliveryTag;
        var key = delivery.RoutingKey;
        var suffix = "." + Topics.TelemetryLevel;
        var deviceId = key.EndsWith(suffix, StringComparison.Ordinal) ? key[..^suffix.Length].Replace('/', '.') : "";
        if (!Topics.IsValidDeviceId(deviceId))
        {
            metrics.TelemetryRejected();
            logger.LogWarning("Rejected a message with routing key '{Key}': not {{id}}.telemetry with a valid device id", TelemetryParser.Printable(key));
            acks.TryWrite(tag);
            return;
        }
        // The body is only valid during this call: the parser copies what it keeps.
        if (!TelemetryParser.TryParse(deviceId, delivery.Body.Span, out var reading, out var error))
        {
            metrics.TelemetryRejected();
            logger.LogWarning("Rejected telemetry from device {DeviceId}: {Problem}", deviceId, error);
            acks.TryWrite(tag);
            return;
        }
        try
        {
            await pipeline.AcceptAsync(reading, fromGroupFeed, () => acks.TryWrite(tag), stoppingToken);
        }
        catch (Exception e) when (e is OperationCanceledException or ChannelClosedException)
        {
            // Shutting down: left unacknowledged, the reading goes back to the queue for another server.
        }
    }

    async Task AcknowledgeAsync(IChannel channel, ChannelReader<ulong> tags)
    {
        // One acknowledgement per reading, in whatever order they finish: a multiple-acknowledgement could cover a reading
        // that is not stored yet.
        await foreach (var tag in tags.ReadAllAsync())
        {
            try
            {
                await channel.BasicAckAsync(tag, multiple: false);
            }
            catch (Exception e)
            {
                // The channel is gone: the broker has already handed this reading back to the queue.
                logger.LogDebug("Acknowledgement {Tag} not sent: {Error}", tag, e.Message);
            }
        }
    }
}
