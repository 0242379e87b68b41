using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using MQTTnet.Internal;
using MQTTnet.Protocol;
using MQTTnet.Server;
using MQTTnet.Server.Internal;
using MQTTnet.Server.Internal.Formatter;

namespace Nightlight.Broker;

/// <summary>
/// Delivers a publish to the sessions that can match its topic. MQTTnet's own dispatch copies the list of every
/// session with a subscription and checks each of them, for every message: with 10,000 devices, each subscribed to
/// its own <c>{id}/commands</c>, every reading and every command costs 10,000 checks. Here an index from each exact
/// topic filter to its clients, plus the few clients that hold wildcard filters, names the candidates; MQTTnet's own
/// subscription check on each candidate session still decides whether and how it gets the message (QoS, no-local,
/// subscription identifiers), and the packet goes into the session's own queue, so what a client sees is MQTTnet's
/// behaviour. Retained messages keep MQTTnet's path, which also stores them.
/// </summary>
/// <remarks>
/// The index only ever names too many candidates, never too few: a filter is added when MQTTnet reports the
/// subscription and removed when it reports the unsubscription or the session's end, and a stale entry costs one
/// check that says no. MQTTnet keeps its sessions in a private field; an <see cref="UnsafeAccessorAttribute"/> reaches it
/// (checked at start-up: when it cannot, routing falls back to MQTTnet's dispatch and says so). The broker does not
/// use MQTTnet's per-recipient enqueue interceptor, which this path does not call; access control happens at
/// subscribe and publish time (<see cref="BrokerAccess"/>).
/// </remarks>
public sealed class TopicRouter(BrokerMetrics metrics)
{
    // Exact filter → clients subscribed to it. Arrays are replaced, never changed, so a publish reads without a lock.
    readonly ConcurrentDictionary<string, string[]> _exact = new(StringComparer.Ordinal);

    // Client → its filters, exact and wildcard, so its entries can be removed when its session ends.
    readonly ConcurrentDictionary<string, HashSet<string>> _filtersByClient = new(StringComparer.Ordinal);

    // Clients holding at least one wildcard (or shared) filter: every publish checks them.
    volatile string[] _wildcardClients = [];
    readonly Lock _gate = new();

    MqttSessionsStorage? _sessions;
    ReaderWriterLockSlim? _sessionsLock;

    [UnsafeAccessor(UnsafeAccessorKind.Field, Name = "_clientSessionsManager")]
    static extern ref MqttClientSessionsManager SessionsManager(MqttServer server);

    [UnsafeAccessor(UnsafeAccessorKind.Field, Name = "_sessionsStorage")]
    static extern ref MqttSessionsStorage SessionsStorage(MqttClientSessionsManager manager);

    [UnsafeAccessor(UnsafeAccessorKind.Field, Name = "_sessionsManagementLock")]
    static extern ref ReaderWriterLockSlim SessionsLock(MqttClientSessionsManager manager);

    /// <summary>True once attached to a broker whose sessions it can reach.</summary>
    public bool IsActive => _sessions is not null;

    /// <summary>
    /// Starts following <paramref name="server"/>'s subscriptions. Returns false, leaving MQTTnet's dispatch in
    /// charge, when this MQTTnet build does not have the fields the router needs.
    /// </summary>
    public bool Attach(MqttServer server)
    {
        try
        {
            var manager = SessionsManager(server);
            _sessions = SessionsStorage(manager);
            _sessionsLock = SessionsLock(manager);
        }
        catch (MissingFieldException)
        {
            _sessions = null;
            return false;
        }
        server.ClientSubscribedTopicAsync += e =>
        {
            Add(e.ClientId, e.TopicFilter.Topic);
            return Task.CompletedTask;
        };
        server.ClientUnsubscribedTopicAsync += e =>
        {
            Remove(e.ClientId, e.TopicFilter);
            return Task.CompletedTask;
        };
        server.SessionDeletedAsync += e =>
        {
            RemoveClient(e.Id);
            return Task.CompletedTask;
        };
        return true;
    }

    static bool IsWildcard(string filter) =>
        filter.Contains('+') || filter.Contains('#') || filter.StartsWith("$share/", StringComparison.Ordinal);

    void Add(string clientId, string filter)
    {
        lock (_gate)
        {
            var filters = _filtersByClient.GetOrAdd(clientId, _ => new HashSet<string>(StringComparer.Ordinal));
            if (!filters.Add(filter))
            {
                return;
            }
            if (IsWildcard(filter))
            {
                if (!_wildcardClients.Contains(clientId))
                {
                    _wildcardClients = [.. _wildcardClients, clientId];
                }
            }
            else
            {
                _exact.AddOrUpdate(filter, _ => [clientId], (_, clients) => clients.Contains(clientId) ? clients : [.. clients, clientId]);
            }
        }
    }

    void Remove(string clientId, string filter)
    {
        lock (_gate)
        {
            RemoveLocked(clientId, filter);
        }
    }

    void RemoveClient(string clientId)
    {
        lock (_gate)
        {
            if (_filtersByClient.TryGetValue(clientId, out var filters))
            {
                foreach (var filter in filters.ToList())
                {
                    RemoveLocked(clientId, filter);
                }
            }
        }
    }

    void RemoveLocked(string clientId, string filter)
    {
        if (!_filtersByClient.TryGetValue(clientId, out var filters) || !filters.Remove(filter))
        {
            return;
        }
        if (IsWildcard(filter))
        {
            if (!filters.Any(IsWildcard))
            {
                _wildcardClients = _wildcardClients.Where(c => c != clientId).ToArray();
            }
        }
        else if (_exact.TryGetValue(filter, out var clients))
        {
            var left = clients.Where(c => c != clientId).ToArray();
            if (left.Length == 0)
            {
                _exact.TryRemove(filter, out _);
            }
            else
            {
                _exact[filter] = left;
            }
        }
        if (filters.Count == 0)
        {
            _filtersByClient.TryRemove(clientId, out _);
        }
    }

    /// <summary>
    /// Delivers the message of <paramref name="e"/> to its subscribers and tells MQTTnet not to dispatch it again.
    /// Called last among the publish interceptors, after access control; does nothing for a publish already
    /// refused, for a retained message, or when the router is not attached. <paramref name="takenInProcess"/>: an
    /// in-process client (<see cref="InProcessClients"/>) already read it, so it had a subscriber.
    /// </summary>
    public void Route(InterceptingPublishEventArgs e, bool takenInProcess = false)
    {
        var sessions = _sessions;
        var message = e.ApplicationMessage;
        if (sessions is null || !e.ProcessPublish || message is null || message.Retain || string.IsNullOrEmpty(message.Topic))
        {
            return;
        }
        var exact = _exact.TryGetValue(message.Topic, out var clients) ? clients : [];
        var wildcard = _wildcardClients;
        MqttTopicHash.Calculate(message.Topic, out var topicHash, out _, out _);
        var matched = 0;
        _sessionsLock!.EnterReadLock();
        try
        {
            foreach (var clientId in exact)
            {
                matched += Deliver(sessions, clientId, message, topicHash, e.ClientId);
            }
            foreach (var clientId in wildcard)
            {
                // A client with both an exact and a wildcard filter for this topic gets one copy (MQTT-3.3.5-1 allows
                // either; MQTTnet's dispatch also sends one, at the highest QoS of the matching filters).
                if (exact.Length > 0 && Array.IndexOf(exact, clientId) >= 0)
                {
                    continue;
                }
                matched += Deliver(sessions, clientId, message, topicHash, e.ClientId);
            }
        }
        finally
        {
            _sessionsLock.ExitReadLock();
        }
        if (matched == 0 && !takenInProcess && e.Response.ReasonCode == MqttPubAckReasonCode.Success)
        {
            // As MQTTnet's dispatch answers an MQTT 5 publisher.
            e.Response.ReasonCode = MqttPubAckReasonCode.NoMatchingSubscribers;
        }
        metrics.MessageRouted();
        e.ProcessPublish = false;
    }

    static int Deliver(MqttSessionsStorage sessions, string clientId, MQTTnet.MqttApplicationMessage message, ulong topicHash, string senderId)
    {
        if (!sessions.TryGetSession(clientId, out var session) ||
            !session.TryCheckSubscriptions(message.Topic, topicHash, message.QualityOfServiceLevel, senderId, out var check) ||
            !check.IsSubscribed)
        {
            return 0;
        }
        var packet = MqttPublishPacketFactory.Create(message);
        packet.QualityOfServiceLevel = check.QualityOfServiceLevel;
        packet.SubscriptionIdentifiers = check.SubscriptionIdentifiers;
        // Only non-retained messages come here, so the retain flag is off whatever retain-as-published says.
        packet.Retain = false;
        // A full queue drops its oldest message inside EnqueueDataPacket, which raises the event BrokerEvents counts and logs.
        session.EnqueueDataPacket(new MqttPacketBusItem(packet));
        return 1;
    }
}
