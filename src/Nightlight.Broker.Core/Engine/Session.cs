using Microsoft.Extensions.Logging;
using Nightlight.Broker.Core.Packets;
using Nightlight.Broker.Core.Persistence;

namespace Nightlight.Broker.Core.Engine;

/// <summary>
/// One client id's session: its subscriptions, the messages queued and in flight towards it, the QoS 2 packet ids it
/// has in flight towards the broker, its will and expiry. It outlives connections when its expiry interval is above 0.
/// Every change happens under its lock; it never calls another session while holding it.
/// </summary>
internal sealed class Session(MqttBroker broker, string clientId) : Subscriber
{
    /// <summary>QoS 1 and 2 messages in flight towards a 3.1.1 client, which cannot announce a receive maximum.</summary>
    internal const int LegacySendWindow = 100;

    private readonly Lock _gate = new();
    private readonly OutboundQueue _queue = new();
    private volatile SessionLink? _link;
    private ClientLimits _limits = broker.RestoredLimits;
    private SessionSubscriptions _subscriptions;
    private Dictionary<ushort, Outbound>? _inflight;
    private ushort _lastPacketId;
    private long _sendSequence;
    private HashSet<ushort>? _inboundQoS2;
    private Queue<(MqttPacket Ack, Task? Commit, bool Holds)>? _pendingAcks;
    private bool _ackContinuationScheduled;
    // SUBACKs and UNSUBACKs waiting for the store: while one waits, nothing else goes to the client.
    private int _heldAcks;
    private ApplicationMessage? _delayedWill;
    private ClientContext? _delayedWillClient;
    private bool _willRestored;
    private ITimer? _willTimer;
    private bool _willStored;
    private long _restoredWillDueAtUnixMs;
    private ITimer? _expiryTimer;
    private ITimer? _drainTimer;

    public MqttBroker Broker { get; } = broker;

    public override string ClientId { get; } = clientId;

    public string? Identity { get; private set; }

    /// <summary>Seconds the session outlives its connection (already capped); 0: it ends with it.</summary>
    public uint ExpiryInterval { get; private set; }

    public long DisconnectedAtUnixMs { get; private set; }

    public SessionLink? Link => _link;

    public override bool IsOnline => _link is not null;

    public override bool QueuesOffline => ExpiryInterval > 0;

    private bool Stored => ExpiryInterval > 0;

    private int InflightCount => _inflight?.Count ?? 0;

    // ---- connect, take-over, end ----

    /// <summary>
    /// Attaches a new connection: cancels a pending will and expiry, saves the session when it is stored and the
    /// connection's will in any case. Nothing is sent before <see cref="Acknowledge"/>. True when the store was changed.
    /// </summary>
    public bool Attach(SessionLink link, uint expiryInterval)
    {
        lock (_gate)
        {
            DisposeTimer(ref _willTimer);
            DisposeTimer(ref _expiryTimer);
            _delayedWill = null;
            _delayedWillClient = null;
            _willRestored = false;

            var wasStored = Stored;
            _link = link;
            _limits = link.Client.Limits;
            Identity = link.Client.Identity;
            ExpiryInterval = expiryInterval;
            DisconnectedAtUnixMs = 0;
            if (wasStored && !Stored)
            {
                Broker.Store.DeleteSession(ClientId);
                ForgetStoredLocked();
            }
            else if (Stored)
            {
                // A session with content here was stored already: one without expiry ends before a new connection attaches.
                Broker.Store.SaveSession(ToStored());
            }

            var willSaved = false;
            if (link.Will is { } will)
            {
                // Session state (MQTT 5 §4.1), stored while the connection is open: a crash ends the connection without
                // DISCONNECT, so the restarted broker publishes it (after its delay), as it would have on a hang-up.
                Broker.Store.SaveWill(ToStoredWill(link, will, dueAtUnixMs: 0));
                _willStored = true;
                willSaved = true;
            }
            else
            {
                ForgetStoredWillLocked();
            }

            return wasStored || Stored || willSaved;
        }
    }

    /// <summary>Sends CONNACK, then resends what is in flight and what is queued; nothing when the link was taken over meanwhile.</summary>
    public void Acknowledge(SessionLink link, ConnAckPacket connAck)
    {
        lock (_gate)
        {
            if (_link != link)
            {
                return;
            }

            link.Acknowledged = true;
            link.Sink.Send(connAck);
            ResendLocked(link);
            PumpLocked(link);
        }
    }

    /// <summary>
    /// Detaches <paramref name="link"/> (connection gone, taken over, closed by the host): schedules or hands back its
    /// will, starts expiry. Called under the broker's sessions lock. False when the link was no longer attached;
    /// <paramref name="ended"/>: the session ends with it (expiry 0).
    /// </summary>
    public bool Detach(SessionLink link, DisconnectKind kind, bool publishWill, List<PendingWill> willsNow, out bool ended)
    {
        ended = false;
        lock (_gate)
        {
            if (_link != link)
            {
                return false;
            }

            _link = null;
            Broker.OnDisconnected();
            DisposeTimer(ref _drainTimer);
            _pendingAcks?.Clear();
            _heldAcks = 0;
            _queue.RemoveAllQoS0();

            if (publishWill && link.Will is { } will && (kind != DisconnectKind.Clean || link.DisconnectWithWill))
            {
                var message = Broker.CreateWill(ClientId, will);
                var delay = link.IsV5 ? Math.Min(will.DelayInterval, ExpiryInterval) : 0;
                if (delay == 0)
                {
                    // The broker forgets the stored copy once the will is routed (MqttBroker.PublishWill).
                    willsNow.Add(new PendingWill(message, link.Client, Restored: false));
                    _willStored = false;
                }
                else
                {
                    _delayedWill = message;
                    _delayedWillClient = link.Client;
                    _willTimer = Broker.Time.CreateTimer(static s => ((Session)s!).OnWillDelayElapsed(), this, TimeSpan.FromSeconds(delay), Timeout.InfiniteTimeSpan);
                    if (Stored)
                    {
                        Broker.Store.SaveWill(ToStoredWill(link, will, Broker.NowUnixMs + (delay * 1000L)));
                        _willStored = true;
                    }
                }
            }
            else if (publishWill && ForgetStoredWillLocked())
            {
                // A normal DISCONNECT: nothing to publish after a restart either, which the client may rely on once closed.
                link.WillDiscarded = true;
            }

            if (ExpiryInterval == 0)
            {
                ended = true;
                return true;
            }

            DisconnectedAtUnixMs = Broker.NowUnixMs;
            Broker.Store.SaveSession(ToStored());
            ScheduleExpiryLocked();
            return true;
        }
    }

    /// <summary>
    /// Ends the session (clean start, expiry, zero expiry at disconnect): removes its subscriptions, hands back a will
    /// still waiting for its delay, forgets it in the store. Returns the messages it still held.
    /// </summary>
    public List<Outbound> End(List<PendingWill> willsNow)
    {
        lock (_gate)
        {
            foreach (var subscription in _subscriptions)
            {
                subscription.Removed = true;
                Broker.Tree.Remove(subscription);
            }

            _subscriptions.Clear();

            if (_delayedWill is not null)
            {
                willsNow.Add(new PendingWill(_delayedWill, _delayedWillClient!, _willRestored));
                _delayedWill = null;
            }

            DisposeTimer(ref _willTimer);
            DisposeTimer(ref _expiryTimer);
            DisposeTimer(ref _drainTimer);
            if (Stored)
            {
                Broker.Store.DeleteSession(ClientId);
            }

            _willStored = false;
            var held = _queue.DrainAll();
            if (_inflight is not null)
            {
                held.AddRange(_inflight.Values);
                _inflight = null;
            }

            _inboundQoS2 = null;
            ExpiryInterval = 0;
            return held;
        }
    }

    /// <summary>Rebuilds a stored session after a restart: offline, its expiry counting from now.</summary>
    public void Restore(StoredSession stored, List<StoredDelivery> deliveries, BrokerSnapshot snapshot)
    {
        lock (_gate)
        {
            Identity = stored.Identity;
            ExpiryInterval = Math.Min(stored.SessionExpiryInterval, Broker.Options.MaxSessionExpiry);
            DisconnectedAtUnixMs = Broker.NowUnixMs;
            foreach (var s in stored.Subscriptions)
            {
                if (!TopicFilter.TryParseSubscription(s.Filter, 0, out var group, out var topicFilter))
                {
                    continue;
                }

                var subscription = new Subscription(this, s.Filter, topicFilter, group, new TopicSubscription(s.Filter, s.MaximumQoS, s.NoLocal, s.RetainAsPublished, s.RetainHandling), s.SubscriptionIdentifier);
                _subscriptions.Set(subscription);
                Broker.Tree.Add(subscription);
            }

            foreach (var d in deliveries)
            {
                if (!snapshot.Messages.TryGetValue(d.MessageId, out var message))
                {
                    continue;
                }

                var outbound = new Outbound(message, d.QoS, d.Retain, d.SubscriptionIdentifiers ?? []) { MessageId = d.MessageId, Persisted = true, PacketId = d.PacketId, Released = d.Released };
                if (d.PacketId != 0 && (_inflight is null || !_inflight.ContainsKey(d.PacketId)))
                {
                    outbound.Sequence = ++_sendSequence;
                    (_inflight ??= [])[d.PacketId] = outbound;
                }
                else
                {
                    outbound.PacketId = 0;
                    _queue.Enqueue(outbound);
                }
            }

            if (snapshot.InboundQoS2.TryGetValue(ClientId, out var inbound) && inbound.Count > 0)
            {
                _inboundQoS2 = [.. inbound];
            }

            if (snapshot.Wills.TryGetValue(ClientId, out var will))
            {
                // A connection open at the crash ended then: its will's delay (cut to the expiry) counts from the restart.
                var dueAt = will.DueAtUnixMs != 0 ? will.DueAtUnixMs : Broker.NowUnixMs + (Math.Min(will.DelayInterval, ExpiryInterval) * 1000L);
                _delayedWill = Broker.RestoreWill(will.Message);
                _delayedWillClient = Broker.RestoredWillClient(will);
                _willRestored = true;
                _restoredWillDueAtUnixMs = dueAt;
                _willStored = true;
                if (will.DueAtUnixMs == 0)
                {
                    Broker.Store.SaveWill(will with { DueAtUnixMs = dueAt });
                }
            }

            ScheduleExpiryLocked();
        }
    }

    /// <summary>Starts the delay of a will restored with the session; called once every stored session is back, so it routes to all of them.</summary>
    public void StartRestoredWill()
    {
        lock (_gate)
        {
            if (_delayedWill is null || _willTimer is not null || _link is not null)
            {
                return;
            }

            var due = TimeSpan.FromMilliseconds(Math.Clamp(_restoredWillDueAtUnixMs - Broker.NowUnixMs, 0, 30L * 24 * 3600 * 1000));
            _willTimer = Broker.Time.CreateTimer(static s => ((Session)s!).OnWillDelayElapsed(), this, due, Timeout.InfiniteTimeSpan);
        }
    }

    private StoredWill ToStoredWill(SessionLink link, WillMessage will, long dueAtUnixMs) => new(
        ClientId,
        link.Client.Identity,
        link.Client.Endpoint.Listener,
        new ApplicationMessage { Topic = will.Topic, Payload = will.Payload, QoS = Math.Min(will.QoS, (byte)2), Retain = will.Retain, Properties = will.Properties, SenderClientId = ClientId },
        will.DelayInterval,
        dueAtUnixMs);

    /// <summary>Deletes the stored will; true when there was one.</summary>
    private bool ForgetStoredWillLocked()
    {
        if (!_willStored)
        {
            return false;
        }

        Broker.Store.DeleteWill(ClientId);
        _willStored = false;
        return true;
    }

    /// <summary>Whether the store holds this session's will now (read under the broker's sessions lock).</summary>
    public bool HoldsStoredWill
    {
        get
        {
            lock (_gate)
            {
                return _willStored;
            }
        }
    }

    public StoredSession ToStored()
    {
        var subscriptions = new List<StoredSubscription>(_subscriptions.Count);
        foreach (var s in _subscriptions)
        {
            subscriptions.Add(new StoredSubscription(s.Filter, s.MaximumQoS, s.NoLocal, s.RetainAsPublished, s.RetainHandling, s.Identifier));
        }

        return new StoredSession(ClientId, Identity, ExpiryInterval, DisconnectedAtUnixMs, subscriptions);
    }

    /// <summary>Whether the session has expired (checked by its timer, under the broker's sessions lock).</summary>
    public bool IsExpired(long nowUnixMs)
    {
        lock (_gate)
        {
            return _link is null && ExpiryInterval > 0 && ExpiryInterval != uint.MaxValue
                && nowUnixMs - DisconnectedAtUnixMs >= ExpiryInterval * 1000L;
        }
    }

    private void ScheduleExpiryLocked()
    {
        DisposeTimer(ref _expiryTimer);
        if (ExpiryInterval == uint.MaxValue)
        {
            return;
        }

        var remaining = (ExpiryInterval * 1000L) - (Broker.NowUnixMs - DisconnectedAtUnixMs);
        // Timers reach about 49 days; a longer expiry re-arms on the way.
        var due = TimeSpan.FromMilliseconds(Math.Clamp(remaining, 0, 30L * 24 * 3600 * 1000));
        _expiryTimer = Broker.Time.CreateTimer(static s => ((Session)s!).OnExpiryTimer(), this, due, Timeout.InfiniteTimeSpan);
    }

    private void OnExpiryTimer()
    {
        if (!Broker.TryExpire(this))
        {
            lock (_gate)
            {
                if (_link is null && ExpiryInterval > 0)
                {
                    ScheduleExpiryLocked();
                }
            }
        }
    }

    private void OnWillDelayElapsed()
    {
        PendingWill? will = null;
        lock (_gate)
        {
            if (_delayedWill is not null)
            {
                will = new PendingWill(_delayedWill, _delayedWillClient!, _willRestored);
                // The broker forgets the stored copy once the will is routed.
                _willStored = false;
            }

            _delayedWill = null;
            _delayedWillClient = null;
            DisposeTimer(ref _willTimer);
        }

        if (will is { } publish)
        {
            Broker.PublishWill(publish);
        }
    }

    // ---- delivery towards the client ----

    internal override bool Deliver(ref RouteContext route, ReadOnlySpan<Subscription> subscriptions)
    {
        var message = route.Message;
        lock (_gate)
        {
            var qos = -1;
            var retain = false;
            var identifiers = 0;
            foreach (var found in subscriptions)
            {
                var s = found.Current;
                if (s.Removed || (s.NoLocal && message.SenderClientId == ClientId))
                {
                    continue;
                }

                qos = Math.Max(qos, Math.Min(message.QoS, s.MaximumQoS));
                retain |= s.RetainAsPublished && message.Retain;
                if (s.Identifier != 0)
                {
                    identifiers++;
                }
            }

            if (qos < 0)
            {
                return false;
            }

            uint[] ids = [];
            if (identifiers > 0)
            {
                ids = new uint[identifiers];
                var i = 0;
                foreach (var found in subscriptions)
                {
                    var s = found.Current;
                    if (!s.Removed && s.Identifier != 0 && !(s.NoLocal && message.SenderClientId == ClientId))
                    {
                        ids[i++] = s.Identifier;
                    }
                }
            }

            return DeliverLocked(ref route, (byte)qos, retain, ids);
        }
    }

    /// <summary>Sends at once when nothing waits before it and there is room, otherwise queues (bounded).</summary>
    private bool DeliverLocked(ref RouteContext route, byte qos, bool retain, uint[] ids)
    {
        var message = route.Message;
        if (route.IsExpired)
        {
            Drop(message, DropReason.Expired);
            return false;
        }

        var link = _link;
        if (link is null)
        {
            if (qos == 0 || !Stored)
            {
                return false;
            }

            EnqueueBounded(NewOutbound(ref route, qos, retain, ids));
            return true;
        }

        if (_queue.Count == 0 && MaySendLocked(link) && !IsCongested(link) && (qos == 0 || InflightCount < link.SendWindow))
        {
            if (qos == 0)
            {
                if (link.Sink.SendPublish(message, 0, 0, retain, false, ids))
                {
                    Broker.OnDelivered();
                }
                else
                {
                    Drop(message, DropReason.TooLarge);
                }

                return true;
            }

            SendTracked(link, NewOutbound(ref route, qos, retain, ids));
            return true;
        }

        EnqueueBounded(NewOutbound(ref route, qos, retain, ids));
        if (_queue.Count > 0 && IsCongested(link))
        {
            ScheduleDrainRetryLocked();
        }

        return true;
    }

    private Outbound NewOutbound(ref RouteContext route, byte qos, bool retain, uint[] ids)
    {
        var outbound = new Outbound(route.Message, qos, retain, ids);
        if (qos > 0 && Stored)
        {
            if (route.MessageId == 0)
            {
                route.MessageId = Broker.NextMessageId();
                Broker.Store.SaveMessage(route.MessageId, route.Message);
            }

            outbound.MessageId = route.MessageId;
            route.NeedsCommit = true;
        }

        return outbound;
    }

    /// <summary>Queues, dropping the oldest QoS 0 message when full, else the newcomer if it is QoS 0, else the oldest.</summary>
    private void EnqueueBounded(Outbound outbound)
    {
        var limit = _limits.MaxQueuedMessages;
        if (limit > 0 && _queue.Count >= limit)
        {
            var victim = _queue.RemoveOldestQoS0() ?? (outbound.QoS == 0 ? outbound : _queue.Dequeue());
            Drop(victim, DropReason.QueueFull);
            if (victim == outbound)
            {
                return;
            }
        }

        PersistLocked(outbound);
        _queue.Enqueue(outbound);
    }

    private void PersistLocked(Outbound outbound)
    {
        if (outbound.MessageId != 0 && !outbound.Persisted)
        {
            Broker.Store.Enqueue(ClientId, outbound.ToStored());
            outbound.Persisted = true;
        }
    }

    /// <summary>The store forgot this session: what it holds is no longer stored, and is saved afresh if it becomes stored again.</summary>
    private void ForgetStoredLocked()
    {
        _willStored = false;
        if (_inflight is not null)
        {
            foreach (var outbound in _inflight.Values)
            {
                outbound.MessageId = 0;
                outbound.Persisted = false;
            }
        }

        var queued = _queue.DrainAll();
        foreach (var outbound in queued)
        {
            outbound.MessageId = 0;
            outbound.Persisted = false;
            _queue.Enqueue(outbound);
        }
    }

    private void SendTracked(SessionLink link, Outbound outbound)
    {
        _inflight ??= [];
        do
        {
            _lastPacketId = _lastPacketId == ushort.MaxValue ? (ushort)1 : (ushort)(_lastPacketId + 1);
        }
        while (_inflight.ContainsKey(_lastPacketId));

        outbound.PacketId = _lastPacketId;
        outbound.Sequence = ++_sendSequence;
        _inflight[outbound.PacketId] = outbound;
        if (outbound.Persisted)
        {
            Broker.Store.UpdateDelivery(ClientId, outbound.MessageId, outbound.PacketId, false);
        }
        else
        {
            PersistLocked(outbound);
        }

        if (link.Sink.SendPublish(outbound.Message, outbound.PacketId, outbound.QoS, outbound.Retain, false, outbound.SubscriptionIdentifiers))
        {
            Broker.OnDelivered();
            return;
        }

        _inflight.Remove(outbound.PacketId);
        Drop(outbound, DropReason.TooLarge);
    }

    /// <summary>Hands queued messages to the connection while the window and its write queue allow.</summary>
    private void PumpLocked(SessionLink link)
    {
        if (!MaySendLocked(link))
        {
            return;
        }

        long now = 0;
        while (_queue.Count > 0)
        {
            if (IsCongested(link))
            {
                ScheduleDrainRetryLocked();
                return;
            }

            var next = _queue.Peek();
            if (next.QoS > 0 && InflightCount >= link.SendWindow)
            {
                return;
            }

            _queue.Dequeue();
            if (next.Message.ExpiresAtUnixMs != 0)
            {
                now = now == 0 ? Broker.NowUnixMs : now;
                if (now >= next.Message.ExpiresAtUnixMs)
                {
                    Drop(next, DropReason.Expired);
                    continue;
                }
            }

            if (next.QoS > 0)
            {
                SendTracked(link, next);
            }
            else if (link.Sink.SendPublish(next.Message, 0, 0, next.Retain, false, next.SubscriptionIdentifiers))
            {
                Broker.OnDelivered();
            }
            else
            {
                Drop(next, DropReason.TooLarge);
            }
        }
    }

    /// <summary>After CONNACK on a resumed session: unacknowledged PUBLISHes again with DUP, PUBREL for released QoS 2, in their first order.</summary>
    private void ResendLocked(SessionLink link)
    {
        if (_inflight is null || _inflight.Count == 0)
        {
            return;
        }

        var inOrder = new List<Outbound>(_inflight.Values);
        inOrder.Sort(static (a, b) => a.Sequence.CompareTo(b.Sequence));
        foreach (var outbound in inOrder)
        {
            if (outbound.Released)
            {
                link.Sink.Send(new PublishAckPacket(PacketType.PubRel) { PacketId = outbound.PacketId });
            }
            else if (!link.Sink.SendPublish(outbound.Message, outbound.PacketId, outbound.QoS, outbound.Retain, true, outbound.SubscriptionIdentifiers))
            {
                _inflight.Remove(outbound.PacketId);
                Drop(outbound, DropReason.TooLarge);
            }
        }
    }

    /// <summary>PUBLISHes wait while the CONNACK, or a SUBACK or UNSUBACK, waits for the store.</summary>
    private bool MaySendLocked(SessionLink link) => link.Acknowledged && _heldAcks == 0;

    private bool IsCongested(SessionLink link) => link.Sink.PendingBytes > Broker.Options.MaxPendingBytesPerConnection;

    /// <summary>The connection may not say when its write queue drained: look again shortly.</summary>
    private void ScheduleDrainRetryLocked()
    {
        _drainTimer ??= Broker.Time.CreateTimer(static s => ((Session)s!).OnDrainTimer(), this, TimeSpan.FromMilliseconds(20), Timeout.InfiniteTimeSpan);
    }

    private void OnDrainTimer()
    {
        lock (_gate)
        {
            DisposeTimer(ref _drainTimer);
            if (_link is { } link)
            {
                PumpLocked(link);
            }
        }
    }

    public void HandleDrained(SessionLink link)
    {
        lock (_gate)
        {
            if (_link == link)
            {
                PumpLocked(link);
            }
        }
    }

    private void Drop(Outbound outbound, DropReason reason)
    {
        Drop(outbound.Message, reason);
        if (outbound.MessageId != 0 && outbound.Persisted)
        {
            Broker.Store.Complete(ClientId, outbound.MessageId);
        }
    }

    private void Drop(ApplicationMessage message, DropReason reason)
    {
        Broker.OnDropped();
        Broker.Hooks.OnMessageDropped(ClientId, message, reason);
    }

    // ---- packets from the client ----

    public void HandleAck(SessionLink link, PublishAckPacket packet)
    {
        lock (_gate)
        {
            if (_link != link)
            {
                return;
            }

            var id = packet.PacketId;
            switch (packet.Kind)
            {
                case PacketType.PubAck:
                    if (_inflight is not null && _inflight.TryGetValue(id, out var acked) && acked.QoS == 1)
                    {
                        Finish(acked);
                        PumpLocked(link);
                    }

                    break;
                case PacketType.PubRec:
                    if (_inflight is not null && _inflight.TryGetValue(id, out var received) && received.QoS == 2)
                    {
                        if (packet.ReasonCode >= ReasonCode.UnspecifiedError)
                        {
                            // 5: the receiver refused it; the flow ends here.
                            Finish(received);
                            PumpLocked(link);
                            break;
                        }

                        if (!received.Released)
                        {
                            received.Released = true;
                            if (received.Persisted)
                            {
                                Broker.Store.UpdateDelivery(ClientId, received.MessageId, id, true);
                            }
                        }

                        SendAckLocked(link, new PublishAckPacket(PacketType.PubRel) { PacketId = id });
                    }
                    else
                    {
                        SendAckLocked(link, new PublishAckPacket(PacketType.PubRel) { PacketId = id, ReasonCode = link.IsV5 ? ReasonCode.PacketIdentifierNotFound : ReasonCode.Success });
                    }

                    break;
                case PacketType.PubComp:
                    if (_inflight is not null && _inflight.TryGetValue(id, out var completed) && completed.QoS == 2)
                    {
                        Finish(completed);
                        PumpLocked(link);
                    }

                    break;
                case PacketType.PubRel:
                    var known = _inboundQoS2?.Remove(id) ?? false;
                    if (known && Stored)
                    {
                        Broker.Store.SaveInboundQoS2(ClientId, id, false);
                    }

                    SendAckLocked(link, new PublishAckPacket(PacketType.PubComp)
                    {
                        PacketId = id,
                        ReasonCode = known || !link.IsV5 ? ReasonCode.Success : ReasonCode.PacketIdentifierNotFound,
                    });
                    break;
            }
        }
    }

    private void Finish(Outbound outbound)
    {
        _inflight!.Remove(outbound.PacketId);
        if (outbound.Persisted)
        {
            Broker.Store.Complete(ClientId, outbound.MessageId);
        }
    }

    public void HandlePublish(SessionLink link, PublishPacket packet)
    {
        if (_link != link)
        {
            return;
        }

        var client = link.Client;
        if (!TopicFilter.IsValidTopicName(packet.Topic, Broker.Options.MaxTopicLength))
        {
            // A wildcard makes the packet break the protocol (as Mosquitto answers); a name too long or empty is merely refused.
            var wildcard = packet.Topic.AsSpan().IndexOfAny('+', '#') >= 0;
            Broker.Violation(link, wildcard ? ReasonCode.ProtocolError : ReasonCode.TopicNameInvalid, $"invalid topic name in PUBLISH ({packet.Topic.Length} chars)");
            return;
        }

        if (client.Limits.MaxPublishRate > 0)
        {
            link.ReadDelay = Throttle(link, client.Limits.MaxPublishRate);
            if (link.ReadDelay > TimeSpan.Zero)
            {
                Broker.Hooks.OnPublishThrottled(client);
            }
        }

        var id = packet.PacketId;
        if (packet.QoS == 2)
        {
            lock (_gate)
            {
                if (_inboundQoS2 is not null && _inboundQoS2.Contains(id))
                {
                    // A resent QoS 2 PUBLISH before PUBREL: acknowledge again, deliver nothing.
                    if (_link == link)
                    {
                        SendAckLocked(link, new PublishAckPacket(PacketType.PubRec) { PacketId = id });
                    }

                    return;
                }
            }
        }

        if (packet.QoS > 0 && link.IsV5 && InboundInFlight() >= Broker.Options.ReceiveMaximum)
        {
            Broker.Violation(link, ReasonCode.ReceiveMaximumExceeded, $"more than {Broker.Options.ReceiveMaximum} QoS 1 and 2 publishes in flight");
            return;
        }

        var message = Broker.CreateMessage(packet, ClientId);
        Broker.OnReceived();
        byte reason;
        var needsCommit = false;
        if (!Broker.Hooks.MayPublish(client, message.Topic))
        {
            Drop(message, DropReason.NotAuthorized);
            reason = link.IsV5 ? ReasonCode.NotAuthorized : ReasonCode.Success;
        }
        else
        {
            Broker.Hooks.OnMessagePublished(client, message);
            var deliveries = Broker.Route(message, client.Limits, ref needsCommit);
            if (deliveries < 0)
            {
                Drop(message, DropReason.RetainedQuotaExceeded);
                reason = link.IsV5 ? ReasonCode.QuotaExceeded : ReasonCode.Success;
            }
            else
            {
                reason = deliveries == 0 && link.IsV5 ? ReasonCode.NoMatchingSubscribers : ReasonCode.Success;
            }
        }

        if (packet.QoS == 0)
        {
            return;
        }

        lock (_gate)
        {
            if (_link != link)
            {
                return;
            }

            if (packet.QoS == 2 && reason < ReasonCode.UnspecifiedError)
            {
                (_inboundQoS2 ??= []).Add(id);
                if (Stored)
                {
                    Broker.Store.SaveInboundQoS2(ClientId, id, true);
                    needsCommit = true;
                }
            }

            var ack = new PublishAckPacket(packet.QoS == 1 ? PacketType.PubAck : PacketType.PubRec) { PacketId = id, ReasonCode = reason };
            if (!needsCommit)
            {
                SendAckLocked(link, ack);
                return;
            }
        }

        var commit = Broker.Store.CommitAsync();
        var pending = commit.IsCompletedSuccessfully ? null : commit.AsTask();
        lock (_gate)
        {
            if (_link != link)
            {
                return;
            }

            (_pendingAcks ??= new()).Enqueue((new PublishAckPacket(packet.QoS == 1 ? PacketType.PubAck : PacketType.PubRec) { PacketId = id, ReasonCode = reason }, pending, false));
            FlushAcksLocked(link);
        }
    }

    private int InboundInFlight()
    {
        lock (_gate)
        {
            return (_inboundQoS2?.Count ?? 0) + (_pendingAcks?.Count ?? 0);
        }
    }

    /// <summary>Acknowledgements leave in the order their packets arrived, each after the commit it waits for.</summary>
    private void SendAckLocked(SessionLink link, MqttPacket ack)
    {
        if (_pendingAcks is { Count: > 0 })
        {
            _pendingAcks.Enqueue((ack, null, false));
            FlushAcksLocked(link);
            return;
        }

        link.Sink.Send(ack);
    }

    /// <summary>
    /// A SUBACK or UNSUBACK leaves after the acknowledgements before it and, when it changed a stored session, once that
    /// is durable, as a PUBACK does. While it waits the session holds the PUBLISHes it would send (the retained ones for
    /// a new subscription too), so nothing overtakes it.
    /// </summary>
    private void SendSubscriptionAckLocked(SessionLink link, MqttPacket ack, bool waitForStore)
    {
        if (!waitForStore && _pendingAcks is not { Count: > 0 })
        {
            link.Sink.Send(ack);
            return;
        }

        Task? pending = null;
        if (waitForStore)
        {
            var commit = Broker.Store.CommitAsync();
            pending = commit.IsCompletedSuccessfully ? null : commit.AsTask();
        }

        (_pendingAcks ??= new()).Enqueue((ack, pending, true));
        _heldAcks++;
        FlushAcksLocked(link);
    }

    private void FlushAcksLocked(SessionLink link)
    {
        var released = false;
        while (_pendingAcks!.TryPeek(out var next))
        {
            if (next.Commit is { IsCompleted: false } commit)
            {
                if (!_ackContinuationScheduled)
                {
                    _ackContinuationScheduled = true;
                    commit.ContinueWith(static (_, s) => ((Session)s!).OnCommitted(), this, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
                }

                break;
            }

            _pendingAcks.Dequeue();
            if (next.Commit is { IsCompletedSuccessfully: false })
            {
                // Not durable: no acknowledgement, so the client sends it again after reconnecting.
                Broker.Logger.LogError(next.Commit.Exception, "Session store commit failed; closing {ClientId} unacknowledged", ClientId);
                _pendingAcks.Clear();
                _heldAcks = 0;
                link.Sink.Close(ReasonCode.UnspecifiedError, "storage failure");
                return;
            }

            link.Sink.Send(next.Ack);
            if (next.Holds)
            {
                _heldAcks--;
                released = true;
            }
        }

        if (released && _heldAcks == 0)
        {
            PumpLocked(link);
        }
    }

    private void OnCommitted()
    {
        lock (_gate)
        {
            _ackContinuationScheduled = false;
            if (_link is { } link && _pendingAcks is { Count: > 0 })
            {
                FlushAcksLocked(link);
            }
        }
    }

    private TimeSpan Throttle(SessionLink link, int rate)
    {
        var now = Broker.Time.GetTimestamp();
        if (link.RateFilledAt != 0)
        {
            var elapsed = Broker.Time.GetElapsedTime(link.RateFilledAt, now).TotalSeconds;
            link.RateTokens = Math.Min(rate, link.RateTokens + (elapsed * rate));
        }

        link.RateFilledAt = now;
        link.RateTokens -= 1;
        return link.RateTokens >= 0 ? TimeSpan.Zero : TimeSpan.FromSeconds(-link.RateTokens / rate);
    }

    public void HandleSubscribe(SessionLink link, SubscribePacket packet)
    {
        var client = link.Client;
        var codes = new byte[packet.Subscriptions.Count];
        List<Subscription>? wantRetained = null;
        lock (_gate)
        {
            if (_link != link)
            {
                return;
            }

            var changed = false;
            for (var i = 0; i < codes.Length; i++)
            {
                var requested = packet.Subscriptions[i];
                if (!TopicFilter.TryParseSubscription(requested.Filter, Broker.Options.MaxTopicLength, out var group, out var topicFilter))
                {
                    codes[i] = ReasonCode.TopicFilterInvalid;
                    continue;
                }

                if (group is not null && requested.NoLocal && link.IsV5)
                {
                    codes[i] = ReasonCode.TopicFilterInvalid;
                    continue;
                }

                if (!Broker.Hooks.MaySubscribe(client, topicFilter))
                {
                    codes[i] = ReasonCode.NotAuthorized;
                    continue;
                }

                _subscriptions.TryGetValue(requested.Filter, out var existing);
                if (existing is null && client.Limits.MaxSubscriptions > 0 && _subscriptions.Count >= client.Limits.MaxSubscriptions)
                {
                    codes[i] = ReasonCode.QuotaExceeded;
                    continue;
                }

                var subscription = new Subscription(this, requested.Filter, topicFilter, group, requested, packet.SubscriptionIdentifier ?? 0);
                if (existing is null)
                {
                    Broker.Tree.Add(subscription);
                }
                else
                {
                    existing.ReplacedBy = subscription;
                    Broker.Tree.Replace(existing, subscription);
                }

                _subscriptions.Set(subscription);
                codes[i] = subscription.MaximumQoS;
                changed = true;
                if (group is null && (requested.RetainHandling == 0 || (requested.RetainHandling == 1 && existing is null)))
                {
                    (wantRetained ??= []).Add(subscription);
                }
            }

            if (changed && Stored)
            {
                Broker.Store.SaveSession(ToStored());
            }

            SendSubscriptionAckLocked(link, new SubAckPacket { PacketId = packet.PacketId, ReasonCodes = codes }, waitForStore: changed && Stored);

            if (wantRetained is not null)
            {
                DeliverRetainedLocked(wantRetained);
            }
        }
    }

    /// <summary>Retained messages for new subscriptions, after the SUBACK, with RETAIN set.</summary>
    private void DeliverRetainedLocked(List<Subscription> subscriptions)
    {
        var messages = new List<ApplicationMessage>();
        var now = Broker.NowUnixMs;
        foreach (var subscription in subscriptions)
        {
            messages.Clear();
            Broker.Retained.CollectMatching(subscription.TopicFilter, messages);
            foreach (var message in messages)
            {
                if (subscription.NoLocal && message.SenderClientId == ClientId)
                {
                    continue;
                }

                var route = new RouteContext(message, now);
                if (route.IsExpired)
                {
                    // An expired retained message is forgotten, not counted as a drop for every subscriber.
                    if (Broker.Retained.Remove(message))
                    {
                        Broker.Store.DeleteRetained(message.Topic);
                    }

                    continue;
                }

                uint[] ids = subscription.Identifier == 0 ? [] : [subscription.Identifier];
                DeliverLocked(ref route, Math.Min(message.QoS, subscription.MaximumQoS), true, ids);
            }
        }
    }

    public void HandleUnsubscribe(SessionLink link, UnsubscribePacket packet)
    {
        lock (_gate)
        {
            if (_link != link)
            {
                return;
            }

            var codes = new byte[packet.Filters.Count];
            var changed = false;
            for (var i = 0; i < codes.Length; i++)
            {
                if (_subscriptions.Remove(packet.Filters[i], out var subscription))
                {
                    // Under this lock: a publish that already found the subscription sees it removed and skips it.
                    subscription.Removed = true;
                    Broker.Tree.Remove(subscription);
                    codes[i] = ReasonCode.Success;
                    changed = true;
                }
                else
                {
                    codes[i] = ReasonCode.NoSubscriptionExisted;
                }
            }

            if (changed && Stored)
            {
                Broker.Store.SaveSession(ToStored());
            }

            SendSubscriptionAckLocked(link, new UnsubAckPacket { PacketId = packet.PacketId, ReasonCodes = codes }, waitForStore: changed && Stored);
        }
    }

    public void HandleDisconnect(SessionLink link, DisconnectPacket packet)
    {
        var violation = false;
        lock (_gate)
        {
            if (_link != link)
            {
                return;
            }

            link.DisconnectWithWill = packet.ReasonCode == ReasonCode.DisconnectWithWill;
            if (!link.DisconnectWithWill)
            {
                link.Will = null;
            }

            if (link.IsV5 && packet.SessionExpiryInterval is { } expiry)
            {
                if (ExpiryInterval == 0 && expiry > 0)
                {
                    violation = true;
                }
                else
                {
                    var capped = Math.Min(expiry, Broker.Options.MaxSessionExpiry);
                    if (capped == 0 && Stored)
                    {
                        Broker.Store.DeleteSession(ClientId);
                        ForgetStoredLocked();
                    }

                    ExpiryInterval = capped;
                }
            }
        }

        if (violation)
        {
            Broker.Violation(link, ReasonCode.ProtocolError, "DISCONNECT set a session expiry on a session that had none");
        }
    }

    // ---- subscriptions of restored and resumed sessions ----

    public int SubscriptionCount
    {
        get
        {
            lock (_gate)
            {
                return _subscriptions.Count;
            }
        }
    }

    /// <summary>The broker is being disposed: no timer may fire after it.</summary>
    public void StopTimers()
    {
        lock (_gate)
        {
            DisposeTimer(ref _willTimer);
            DisposeTimer(ref _expiryTimer);
            DisposeTimer(ref _drainTimer);
        }
    }

    private static void DisposeTimer(ref ITimer? timer)
    {
        timer?.Dispose();
        timer = null;
    }
}
