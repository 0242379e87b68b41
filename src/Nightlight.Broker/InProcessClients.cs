using System.Buffers;
using Microsoft.Extensions.Logging;
using MQTTnet.Protocol;
using Nightlight.Broker.Core;
using Nightlight.Broker.Core.Engine;
using Nightlight.Broker.Core.Packets;
using Nightlight.Mqtt;

namespace Nightlight.Broker;

/// <summary>
/// Hands a message to a reader in the broker's own process.
/// <paramref name="payload"/> is valid only during the call: read it before returning, and do not wait in here,
/// because the call runs on the publishing client's thread.
/// </summary>
public delegate void InProcessReceiver(string topic, ReadOnlySequence<byte> payload);

/// <summary>
/// Clients of the embedded broker that live in its process (the server in <c>nightlight up</c>), on the core's
/// in-process clients (<see cref="MqttBroker.ConnectLocal"/>): they receive the messages matching their filters on the
/// broker's publish path and publish straight into it, so no message of theirs is encoded, sent over loopback TCP and
/// decoded again. Every other client is unaffected.
/// </summary>
public sealed partial class InProcessClients(MqttBroker broker, BrokerStartSignal started, BrokerMessageTap tap, ILogger<InProcessClients> logger)
{
    /// <summary>
    /// A client named <paramref name="clientId"/> (the sender id its publishes carry) that receives the messages
    /// matching <paramref name="filters"/> through <paramref name="receive"/> once started.
    /// </summary>
    public InProcessClient Create(string clientId, IReadOnlyList<string> filters, InProcessReceiver receive) =>
        new(this, clientId, filters, receive);

    internal Task Started => started.Started;

    internal MqttBroker Broker => broker;

    /// <summary>Shows an in-process client's publish in the dashboard's message view while one is open.</summary>
    internal void Tap(ApplicationMessage message)
    {
        if (tap.IsWatched)
        {
            tap.Offer(BrokerAccess.Tapped(message, message.SenderClientId ?? ""));
        }
    }

    [LoggerMessage(Level = LogLevel.Error, Message = "In-process client {ClientId} failed on a message on '{Topic}'")]
    internal partial void LogReceiverFailed(Exception error, string clientId, string topic);
}

/// <summary>
/// One in-process client of the embedded broker (see <see cref="InProcessClients"/>). Until <see cref="StartAsync"/>
/// it receives nothing; starting subscribes it, which hands it the retained messages matching its filters first and
/// then every live one. It does not receive its own publishes. Disposing it disconnects it.
/// </summary>
public sealed class InProcessClient : IDisposable
{
    readonly InProcessClients _owner;
    readonly TopicSubscription[] _subscriptions;
    readonly InProcessReceiver _receive;
    LocalClient? _local;
    volatile bool _disposed;

    internal InProcessClient(InProcessClients owner, string clientId, IReadOnlyList<string> filters, InProcessReceiver receive)
    {
        _owner = owner;
        ClientId = clientId;
        _subscriptions = [.. filters.Select(f => new TopicSubscription(f, 1, NoLocal: true))];
        _receive = receive;
    }

    /// <summary>The sender id of this client's publishes.</summary>
    public string ClientId { get; }

    /// <summary>True from start until disposed, while the broker runs.</summary>
    public bool IsConnected => !_disposed && _local is { IsConnected: true };

    /// <summary>Waits for the broker to listen, then connects with its subscriptions (the matching retained messages arrive during this call).</summary>
    public async Task StartAsync(CancellationToken cancellationToken)
    {
        await _owner.Started.WaitAsync(cancellationToken);
        ObjectDisposedException.ThrowIf(_disposed, this);
        _local = _owner.Broker.ConnectLocal(ClientId, _subscriptions, Deliver);
    }

    /// <summary>
    /// Publishes into the broker as this client: each subscriber gets it at the lower of <paramref name="qos"/> and its
    /// subscription's QoS. True once the broker has queued it for every matching subscriber (the meaning of a QoS 1
    /// PUBACK from the broker); false when this client or the broker is not running.
    /// </summary>
    public Task<bool> TryPublishAsync(string topic, ReadOnlyMemory<byte> payload, MqttQualityOfServiceLevel qos, CancellationToken cancellationToken) =>
        TryPublishAsync(topic, payload, qos, retain: false);

    /// <summary>Publishes a retained message (QoS 1), which the broker keeps for later subscribers; false when not running.</summary>
    public Task<bool> TryPublishRetainedAsync(string topic, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken) =>
        TryPublishAsync(topic, payload, MqttQualityOfServiceLevel.AtLeastOnce, retain: true);

    Task<bool> TryPublishAsync(string topic, ReadOnlyMemory<byte> payload, MqttQualityOfServiceLevel qos, bool retain)
    {
        if (_disposed || _local is not { IsConnected: true } local)
        {
            return Task.FromResult(false);
        }
        try
        {
            // Copied: the message is shared by every queue it goes to, and the caller may reuse its buffer.
            var message = new ApplicationMessage { Topic = topic, Payload = payload.ToArray(), QoS = (byte)qos, Retain = retain, SenderClientId = ClientId };
            local.Publish(message);
            _owner.Tap(message);
            return Task.FromResult(true);
        }
        catch (Exception e) when (e is ObjectDisposedException or InvalidOperationException)
        {
            // The broker stopped between the check and the publish.
            return Task.FromResult(false);
        }
    }

    void Deliver(ApplicationMessage message)
    {
        if (_disposed)
        {
            return;
        }
        try
        {
            _receive(message.Topic, new ReadOnlySequence<byte>(message.Payload));
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // The broker's publish path must go on for every other subscriber.
            _owner.LogReceiverFailed(e, ClientId, message.Topic);
        }
    }

    public void Dispose()
    {
        _disposed = true;
        _local?.Dispose();
    }
}
