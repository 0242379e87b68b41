using System.Buffers;
using Microsoft.Extensions.Logging;
using MQTTnet;
using MQTTnet.Protocol;
using MQTTnet.Server;
using Nightlight.Mqtt;

namespace Nightlight.Broker;

/// <summary>
/// Hands a message to a reader in the broker's own process.
/// <paramref name="payload"/> is valid only during the call: read it before returning, and do not wait in here,
/// because the call runs on the publishing client's receive loop.
/// </summary>
public delegate void InProcessReceiver(string topic, ReadOnlySequence<byte> payload);

/// <summary>
/// Clients of the embedded broker that live in its process (the server in <c>nightlight up</c>): they read the
/// messages matching their filters straight from the broker's publish path, after access control, and publish by
/// injecting into the broker, so no message of theirs is encoded, sent over loopback TCP and decoded again. Every
/// other client is unaffected: it still receives through its own MQTT session, with MQTT's rules.
/// </summary>
public sealed partial class InProcessClients(MqttServer server, BrokerStartSignal started, ILogger<InProcessClients> logger)
{
    volatile InProcessClient[] _clients = [];
    readonly Lock _gate = new();

    /// <summary>
    /// A client named <paramref name="clientId"/> (the sender id its publishes carry) that receives the messages
    /// matching <paramref name="filters"/> through <paramref name="receive"/> once started.
    /// </summary>
    public InProcessClient Create(string clientId, IReadOnlyList<string> filters, InProcessReceiver receive) =>
        new(this, clientId, filters, receive);

    internal Task Started => started.Started;

    internal MqttServer Server => server;

    internal ILogger Logger => logger;

    /// <summary>
    /// The broker's own handling of a publish (access control, in-process clients, the topic index), for in-process
    /// clients to publish through without MQTTnet's dispatch around it; null leaves them MQTTnet's dispatch.
    /// </summary>
    internal Action<InterceptingPublishEventArgs>? PublishPath { get; set; }

    internal void Add(InProcessClient client)
    {
        lock (_gate)
        {
            _clients = [.. _clients, client];
        }
    }

    internal void Remove(InProcessClient client)
    {
        lock (_gate)
        {
            _clients = _clients.Where(c => c != client).ToArray();
        }
    }

    /// <summary>
    /// Offers a publish that access control let through to every in-process client whose filters match it.
    /// True when one of them took it (so the publish had a subscriber, even with no MQTT session matching).
    /// </summary>
    internal bool Offer(InterceptingPublishEventArgs e)
    {
        var clients = _clients;
        var message = e.ApplicationMessage;
        if (clients.Length == 0 || !e.ProcessPublish || message is null || string.IsNullOrEmpty(message.Topic))
        {
            return false;
        }
        var taken = false;
        foreach (var client in clients)
        {
            // A client does not read its own publishes, as a subscriber with no-local would not.
            if (client.ClientId != e.ClientId && client.Offer(message.Topic, message.Payload))
            {
                taken = true;
            }
        }
        return taken;
    }

    [LoggerMessage(Level = LogLevel.Error, Message = "In-process client {ClientId} failed on a message on '{Topic}'")]
    internal partial void LogReceiverFailed(Exception error, string clientId, string topic);
}

/// <summary>
/// One in-process client of the embedded broker (see <see cref="InProcessClients"/>). Until <see cref="StartAsync"/>
/// it receives nothing; starting hands it the retained messages matching its filters, as a subscription would, and
/// then every live one. Disposing it stops both.
/// </summary>
public sealed class InProcessClient : IDisposable
{
    readonly InProcessClients _owner;
    readonly string[] _filters;
    readonly InProcessReceiver _receive;
    readonly Lock _gate = new();
    readonly System.Collections.IDictionary _sessionItems;

    // Live messages that arrive while the retained ones are being handed over wait here, copied, so none is handed
    // before an older retained state of the same topic. Null once live.
    volatile List<(string Topic, byte[] Payload)>? _held;
    volatile bool _live;
    volatile bool _disposed;

    internal InProcessClient(InProcessClients owner, string clientId, IReadOnlyList<string> filters, InProcessReceiver receive)
    {
        _owner = owner;
        ClientId = clientId;
        _filters = [.. filters];
        _receive = receive;
        _sessionItems = BrokerAccess.InProcessSessionItems();
    }

    /// <summary>The sender id of this client's publishes.</summary>
    public string ClientId { get; }

    /// <summary>True from start until disposed, while the broker runs.</summary>
    public bool IsConnected => _live && !_disposed && _owner.Server.IsStarted;

    /// <summary>Waits for the broker to listen, then hands over the matching retained messages and goes live.</summary>
    public async Task StartAsync(CancellationToken cancellationToken)
    {
        await _owner.Started.WaitAsync(cancellationToken);
        lock (_gate)
        {
            _held = [];
        }
        _owner.Add(this);
        var retained = await _owner.Server.GetRetainedMessagesAsync();
        foreach (var message in retained)
        {
            if (Matches(message.Topic))
            {
                Deliver(message.Topic, message.Payload);
            }
        }
        lock (_gate)
        {
            // Under the lock, so a live message arriving now waits for the held ones and keeps its order.
            foreach (var (topic, payload) in _held!)
            {
                Deliver(topic, new ReadOnlySequence<byte>(payload));
            }
            _held = null;
            _live = true;
        }
    }

    /// <summary>
    /// Publishes into the broker as this client: it passes access control and routing like a client's publish, and
    /// each subscriber gets it at the lower of <paramref name="qos"/> and its subscription's QoS. True once the broker
    /// has put it in the queue of every matching subscriber (the meaning of a QoS 1 PUBACK from the broker); false
    /// when the broker is not running.
    /// </summary>
    public Task<bool> TryPublishAsync(string topic, ReadOnlyMemory<byte> payload, MqttQualityOfServiceLevel qos, CancellationToken cancellationToken)
    {
        var server = _owner.Server;
        if (_disposed || !server.IsStarted)
        {
            return Task.FromResult(false);
        }
        var message = new MqttApplicationMessage
        {
            Topic = topic,
            Payload = new ReadOnlySequence<byte>(payload),
            QualityOfServiceLevel = qos,
        };
        if (_owner.PublishPath is { } publish)
        {
            // What MQTTnet's dispatch would do for this message, without its objects per message: the server sends
            // one command per reading it answers. Done when it returns: the message is in every subscriber's queue.
            try
            {
                publish(new InterceptingPublishEventArgs(message, ClientId, Nightlight.Security.AccessPolicy.InProcessUserName, _sessionItems, cancellationToken));
                return Task.FromResult(true);
            }
            catch (ObjectDisposedException)
            {
                // A session ended as the broker stopped: as with MQTTnet's dispatch below.
                return Task.FromResult(false);
            }
        }
        return InjectAsync(server, message, cancellationToken);
    }

    /// <summary>
    /// Publishes a retained message (QoS 1) through MQTTnet's own dispatch, which keeps it for later subscribers; false
    /// when the broker is not running.
    /// </summary>
    public Task<bool> TryPublishRetainedAsync(string topic, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken)
    {
        var server = _owner.Server;
        if (_disposed || !server.IsStarted)
        {
            return Task.FromResult(false);
        }
        return InjectAsync(server, new MqttApplicationMessage
        {
            Topic = topic,
            Payload = new ReadOnlySequence<byte>(payload),
            QualityOfServiceLevel = MqttQualityOfServiceLevel.AtLeastOnce,
            Retain = true,
        }, cancellationToken);
    }

    async Task<bool> InjectAsync(MqttServer server, MqttApplicationMessage message, CancellationToken cancellationToken)
    {
        try
        {
            await server.InjectApplicationMessage(new InjectedMqttApplicationMessage(message)
            {
                SenderClientId = ClientId,
                SenderUserName = Nightlight.Security.AccessPolicy.InProcessUserName,
                CustomSessionItems = _sessionItems,
            }, cancellationToken);
            return true;
        }
        catch (Exception e) when (e is InvalidOperationException or ObjectDisposedException)
        {
            // The broker stopped between the check and the publish.
            return false;
        }
    }

    internal bool Offer(string topic, ReadOnlySequence<byte> payload)
    {
        if (!Matches(topic))
        {
            return false;
        }
        if (_held is not null)
        {
            lock (_gate)
            {
                if (_held is { } held)
                {
                    held.Add((topic, payload.ToArray()));
                    return true;
                }
            }
        }
        Deliver(topic, payload);
        return true;
    }

    bool Matches(string topic)
    {
        foreach (var filter in _filters)
        {
            if (MqttTopicFilterComparer.Compare(topic, filter) == MqttTopicFilterCompareResult.IsMatch)
            {
                return true;
            }
        }
        return false;
    }

    void Deliver(string topic, ReadOnlySequence<byte> payload)
    {
        try
        {
            _receive(topic, payload);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // The broker's publish path must go on for every other subscriber.
            _owner.LogReceiverFailed(e, ClientId, topic);
        }
    }

    public void Dispose()
    {
        _disposed = true;
        _owner.Remove(this);
    }
}
