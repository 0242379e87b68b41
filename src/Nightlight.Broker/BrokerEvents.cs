using System.Runtime.CompilerServices;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using MQTTnet.Packets;
using MQTTnet.Server;
using Nightlight.Mqtt;

namespace Nightlight.Broker;

/// <summary>
/// Hooks the broker's events: counts clients and messages, logs every dropped message, and gives MQTT 3.1.1
/// clients that send no client id a generated one, as the 3.1.1 spec (3.1.3-6) allows and Mosquitto does.
/// </summary>
sealed partial class BrokerEvents(MqttServer server, BrokerAccess access, BrokerListeners listeners, TopicRouter router, InProcessClients inProcess, Nightlight.Security.DeviceIdentities identities, BrokerMetrics metrics, BrokerStartSignal started, IOptions<BrokerOptions> options, ILogger<BrokerEvents> logger, BrokerMessageTap tap, LessonPlaceholder placeholder)
    : IHostedLifecycleService
{
    public Task StartAsync(CancellationToken cancellationToken)
    {
        server.ValidatingConnectionAsync += OnValidatingConnection;
        server.ClientConnectedAsync += OnClientConnected;
        server.ClientDisconnectedAsync += OnClientDisconnected;
        server.InterceptingPublishAsync += OnPublish;
        server.InterceptingSubscriptionAsync += OnSubscription;
        server.QueuedApplicationMessageOverwrittenAsync += OnOverwritten;
        server.StartedAsync += OnStarted;
        if (options.Value.IndexedRouting && !router.Attach(server))
        {
            logger.LogWarning("Indexed routing is off: this MQTTnet build does not expose its sessions as expected; every message visits every session");
        }
        if (router.IsActive)
        {
            // With the topic index this is all MQTTnet's dispatch would run for an in-process client's publish.
            inProcess.PublishPath = Intercept;
        }
        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    // Kestrel waits for open connections when it stops; MQTT connections never end by themselves, so the broker
    // closes them first (after the in-process clients, which stop earlier and say goodbye).
    public async Task StoppingAsync(CancellationToken cancellationToken)
    {
        if (server.IsStarted)
        {
            await server.StopAsync(new MqttServerStopOptions());
        }
    }

    public Task StartingAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StartedAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StoppedAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    Task OnStarted(EventArgs e)
    {
        var o = options.Value;
        logger.LogInformation("MQTT broker listening on mqtt://{Bind}:{Port} (transport {Transport})", o.Bind, o.MqttPort, o.Transport);
        var anonymous = listeners.All.Where(access.AnonymousAllowedOn).Select(l => l.Address).ToList();
        var authenticated = listeners.All.Where(l => !access.AnonymousAllowedOn(l)).Select(l => l.Address).ToList();
        if (anonymous.Count > 0)
        {
            logger.LogInformation("Anonymous clients allowed on {Anonymous}; credentials required on {Authenticated}",
                string.Join(", ", anonymous), authenticated.Count == 0 ? "none" : string.Join(", ", authenticated));
            if (listeners.All.Any(l => !l.OnLoopback && access.AnonymousAllowedOn(l)))
            {
                logger.LogWarning("Anonymous clients are allowed beyond loopback (Broker:AllowAnonymous): anyone who reaches those ports can read and publish every topic");
            }
        }
        else
        {
            logger.LogInformation("Clients must authenticate on every listener ({Count} identities; add one with: nightlight devices add ID)", identities.Count);
        }
        started.Signal();
        return Task.CompletedTask;
    }

    // MQTTnet rejects an empty client id for 3.1.1 after this event and offers no setter; the packet is the
    // event's private field, so we reach it with an UnsafeAccessor (no reflection cost, checked by a test).
    [UnsafeAccessor(UnsafeAccessorKind.Field, Name = "_connectPacket")]
    static extern ref MqttConnectPacket ConnectPacket(ValidatingConnectionEventArgs args);

    async Task OnValidatingConnection(ValidatingConnectionEventArgs e)
    {
        if (string.IsNullOrEmpty(e.ClientId))
        {
            if (e.CleanSession == false)
            {
                // 3.1.1 §3.1.3-8: no id and a persistent session cannot work; the protocol says reject it.
                e.ReasonCode = MQTTnet.Protocol.MqttConnectReasonCode.ClientIdentifierNotValid;
                return;
            }
            var assigned = "auto-" + Guid.NewGuid().ToString("N");
            e.AssignedClientIdentifier = assigned;
            ConnectPacket(e).ClientId = assigned;
        }
        if (LessonPlaceholder.In(e.ClientId))
        {
            placeholder.Warn(e.ClientId, "client id", e.ClientId);
        }
        await access.ValidateAsync(e);
    }

    Task OnSubscription(InterceptingSubscriptionEventArgs e)
    {
        access.InterceptSubscription(e);
        if (LessonPlaceholder.In(e.TopicFilter.Topic))
        {
            placeholder.Warn(e.ClientId, "topic", e.TopicFilter.Topic);
        }
        return Task.CompletedTask;
    }

    Task OnClientConnected(ClientConnectedEventArgs e)
    {
        metrics.ClientConnected();
        LogConnected(e.ClientId, e.RemoteEndPoint?.ToString(), e.ProtocolVersion.ToString());
        return Task.CompletedTask;
    }

    Task OnClientDisconnected(ClientDisconnectedEventArgs e)
    {
        metrics.ClientDisconnected();
        LogDisconnected(e.ClientId, e.DisconnectType.ToString());
        return Task.CompletedTask;
    }

    Task OnPublish(InterceptingPublishEventArgs e)
    {
        Intercept(e);
        return Task.CompletedTask;
    }

    void Intercept(InterceptingPublishEventArgs e)
    {
        metrics.MessageIn();
        access.InterceptPublish(e);
        if (tap.IsWatched && e.ProcessPublish)
        {
            Tap(e);
        }
        var takenInProcess = inProcess.Offer(e);
        router.Route(e, takenInProcess);
    }

    void Tap(InterceptingPublishEventArgs e)
    {
        var message = e.ApplicationMessage;
        var payload = message.Payload;
        var kept = System.Buffers.BuffersExtensions.ToArray(payload.Slice(0, Math.Min(payload.Length, BrokerMessageTap.MaxPayloadBytes)));
        tap.Offer(new TappedMessage(DateTimeOffset.UtcNow, message.Topic, kept, (int)payload.Length, (int)message.QualityOfServiceLevel,
            message.Retain, e.ClientId));
    }

    Task OnOverwritten(QueueMessageOverwrittenEventArgs e)
    {
        var total = metrics.MessageDropped();
        // One line for the first drop and then one per thousand, so a flood cannot flood the log too.
        if (total == 1 || total % 1000 == 0)
        {
            logger.LogWarning("Subscriber {ClientId} is too slow: its queue of {Limit} messages is full, oldest dropped ({Total} dropped so far)",
                e.ReceiverClientId, options.Value.MaxPendingMessagesPerClient, total);
        }
        return Task.CompletedTask;
    }

    [LoggerMessage(Level = LogLevel.Debug, Message = "Client {ClientId} connected from {Endpoint} ({Protocol})")]
    partial void LogConnected(string clientId, string? endpoint, string protocol);

    [LoggerMessage(Level = LogLevel.Debug, Message = "Client {ClientId} disconnected ({Type})")]
    partial void LogDisconnected(string clientId, string type);
}
