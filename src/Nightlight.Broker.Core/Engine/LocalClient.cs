using Microsoft.Extensions.Logging;
using Nightlight.Broker.Core.Packets;

namespace Nightlight.Broker.Core.Engine;

/// <summary>
/// An in-process client of <see cref="MqttBroker"/>: it publishes through the same routing as a network client (no
/// access check) and receives matching messages synchronously on the publisher's thread, as published, without encoding.
/// </summary>
public sealed class LocalClient : IDisposable
{
    private readonly MqttBroker _broker;
    private readonly Receiver _receiver;
    private readonly List<Subscription> _subscriptions = [];

    internal LocalClient(MqttBroker broker, string clientId, LocalReceiver receiver)
    {
        _broker = broker;
        ClientId = clientId;
        _receiver = new Receiver(clientId, receiver, broker.Logger);
    }

    public string ClientId { get; }

    public bool IsConnected => _receiver.Connected;

    /// <summary>Routes <paramref name="message"/> to subscribers; no-local subscriptions of this client id skip it.</summary>
    public void Publish(ApplicationMessage message)
    {
        ObjectDisposedException.ThrowIf(!IsConnected, this);
        if (message.SenderClientId != ClientId)
        {
            message = new ApplicationMessage
            {
                Topic = message.Topic,
                Payload = message.Payload,
                QoS = message.QoS,
                Retain = message.Retain,
                Properties = message.Properties,
                ExpiresAtUnixMs = message.ExpiresAtUnixMs,
                SenderClientId = ClientId,
            };
        }

        _broker.Publish(message);
    }

    internal void Subscribe(IReadOnlyList<TopicSubscription> subscriptions)
    {
        var retained = new List<ApplicationMessage>();
        foreach (var requested in subscriptions)
        {
            if (!TopicFilter.TryParseSubscription(requested.Filter, 0, out var group, out var topicFilter))
            {
                throw new ArgumentException($"Invalid topic filter '{requested.Filter}'.", nameof(subscriptions));
            }

            var subscription = new Subscription(_receiver, requested.Filter, topicFilter, group, requested, 0);
            lock (_subscriptions)
            {
                _subscriptions.Add(subscription);
            }

            _broker.Tree.Add(subscription);
            if (group is null && requested.RetainHandling != 2)
            {
                _broker.Retained.CollectMatching(topicFilter, retained);
            }
        }

        foreach (var message in retained)
        {
            _receiver.Receive(message);
        }
    }

    public void Dispose()
    {
        if (!_receiver.Connected)
        {
            return;
        }

        _receiver.Connected = false;
        lock (_subscriptions)
        {
            foreach (var subscription in _subscriptions)
            {
                subscription.Removed = true;
                _broker.Tree.Remove(subscription);
            }

            _subscriptions.Clear();
        }

        _broker.RemoveLocal(this);
    }

    private sealed class Receiver(string clientId, LocalReceiver receiver, ILogger logger) : Subscriber
    {
        private volatile bool _connected = true;

        public override string ClientId { get; } = clientId;

        public bool Connected
        {
            get => _connected;
            set => _connected = value;
        }

        public override bool IsOnline => _connected;

        public override bool QueuesOffline => false;

        internal override bool Deliver(ref RouteContext route, ReadOnlySpan<Subscription> subscriptions)
        {
            if (!_connected || route.IsExpired)
            {
                return false;
            }

            foreach (var s in subscriptions)
            {
                if (!s.Removed && !(s.NoLocal && route.Message.SenderClientId == ClientId))
                {
                    Receive(route.Message);
                    return true;
                }
            }

            return false;
        }

        public void Receive(ApplicationMessage message)
        {
            try
            {
                receiver(message);
            }
            catch (Exception e)
            {
                logger.LogError(e, "In-process client {ClientId} failed on a message to {Topic}", ClientId, message.Topic);
            }
        }
    }
}
