using System.IO.Pipelines;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using Nightlight.Broker.Core.Connection;
using Nightlight.Broker.Core.Packets;
using Nightlight.Broker.Core.Persistence;

namespace Nightlight.Broker.Core.Engine;

/// <summary>
/// The broker: sessions, routing, retained messages, wills and expiry behind one facade. The host gives it connections
/// (<see cref="RunConnectionAsync"/>) and in-process clients (<see cref="ConnectLocal"/>); it uses the store it is
/// given and does not dispose it.
/// </summary>
public sealed class MqttBroker : ISessionRegistry, IAsyncDisposable
{
    [ThreadStatic]
    private static RouteBuffers? t_buffers;

    private static readonly Comparison<Subscription> s_byOwner = static (a, b) => a.Owner.Id.CompareTo(b.Owner.Id);

    private readonly Dictionary<string, Session> _sessions = new(StringComparer.Ordinal);
    private readonly Lock _sessionsGate = new();
    private readonly Dictionary<string, LocalClient> _locals = new(StringComparer.Ordinal);
    private long _lastMessageId;
    private int _connected;
    private int _sessionCount;
    private long _received;
    private long _delivered;
    private long _dropped;
    private long _willsAfterRestart;
    private bool _stopping;
    private readonly CancellationTokenSource _stoppingSource = new();

    public MqttBroker(BrokerCoreOptions options, IBrokerHooks hooks, ISessionStore store, ILogger logger, TimeProvider? time = null)
    {
        Options = options;
        Hooks = hooks;
        Store = store;
        Logger = logger;
        Time = time ?? TimeProvider.System;
        RestoredLimits = ClientLimits.Unlimited with { MaxQueuedMessages = options.RestoredSessionQueueLimit };
    }

    internal BrokerCoreOptions Options { get; }

    internal IBrokerHooks Hooks { get; }

    internal ISessionStore Store { get; }

    internal ILogger Logger { get; }

    internal TimeProvider Time { get; }

    internal SubscriptionTree Tree { get; } = new();

    internal RetainedMessages Retained { get; } = new();

    /// <summary>Limits of a session restored from the store, until its client connects.</summary>
    internal ClientLimits RestoredLimits { get; }

    internal long NowUnixMs => Time.GetUtcNow().ToUnixTimeMilliseconds();

    /// <summary>
    /// Loads the store's snapshot: sessions (offline, expiry counting from now), their messages, retained messages. The
    /// wills it holds belong to connections the last run ended without DISCONNECT: a stored session's comes after its
    /// delay (counted from now, cut to the session expiry), any other at once.
    /// </summary>
    public Task StartAsync(CancellationToken ct)
    {
        var snapshot = Store.Load();
        _lastMessageId = snapshot.LastMessageId;
        foreach (var message in snapshot.Retained)
        {
            Retained.TrySet(message, null);
        }

        var restored = new List<Session>(snapshot.Sessions.Count);
        lock (_sessionsGate)
        {
            foreach (var (stored, deliveries) in snapshot.Sessions)
            {
                if (stored.SessionExpiryInterval == 0 || _sessions.ContainsKey(stored.ClientId))
                {
                    continue;
                }

                var session = new Session(this, stored.ClientId);
                session.Restore(stored, deliveries, snapshot);
                restored.Add(session);
                _sessions.Add(stored.ClientId, session);
                _sessionCount = _sessions.Count;
            }
        }

        foreach (var session in restored)
        {
            session.StartRestoredWill();
        }

        if (snapshot.Wills.Count > 0)
        {
            Logger.LogInformation("Broker core: {Wills} wills left by the last run (connections it ended without DISCONNECT), published now or when their delay runs out",
                snapshot.Wills.Count);
        }

        // A will without a restored session: the session ended with its connection, so the will is due now (MQTT 5 §3.1.3.2.2).
        var resumed = restored.Select(session => session.ClientId).ToHashSet(StringComparer.Ordinal);
        foreach (var will in snapshot.Wills.Values)
        {
            if (!resumed.Contains(will.ClientId))
            {
                PublishWill(new PendingWill(RestoreWill(will.Message), RestoredWillClient(will), Restored: true));
            }
        }

        Logger.LogInformation("Broker core started: {Sessions} stored sessions, {Retained} retained messages", snapshot.Sessions.Count, Retained.Count);
        return Task.CompletedTask;
    }

    /// <summary>Serves one client connection until it ends.</summary>
    public Task RunConnectionAsync(IDuplexPipe transport, ClientEndpoint endpoint, CancellationToken ct) =>
        MqttConnection.RunAsync(transport, endpoint, this, Options, Hooks, Logger, Time, ct);

    /// <summary>
    /// An in-process client: no encoding; <paramref name="receiver"/> runs on the publishing thread and must not block.
    /// A second client with the same id replaces the first.
    /// </summary>
    public LocalClient ConnectLocal(string clientId, IReadOnlyList<TopicSubscription> subscriptions, LocalReceiver receiver)
    {
        var client = new LocalClient(this, clientId, receiver);
        LocalClient? replaced;
        lock (_locals)
        {
            _locals.Remove(clientId, out replaced);
            _locals[clientId] = client;
        }

        replaced?.Dispose();
        client.Subscribe(subscriptions);
        return client;
    }

    internal void RemoveLocal(LocalClient client)
    {
        lock (_locals)
        {
            if (_locals.TryGetValue(client.ClientId, out var current) && current == client)
            {
                _locals.Remove(client.ClientId);
            }
        }
    }

    /// <summary>Publishes as the broker itself (no access check, no retained quota).</summary>
    public void Publish(ApplicationMessage message)
    {
        OnReceived();
        var needsCommit = false;
        Route(message, null, ref needsCommit);
        if (needsCommit)
        {
            ObserveCommit(Store.CommitAsync());
        }
    }

    /// <summary>Ends every live connection whose client matches, now (its will is published); returns how many.</summary>
    public int DisconnectWhere(Func<ClientContext, bool> predicate, byte reasonCode)
    {
        var targets = new List<SessionLink>();
        lock (_sessionsGate)
        {
            foreach (var session in _sessions.Values)
            {
                if (session.Link is { } link && predicate(link.Client))
                {
                    targets.Add(link);
                }
            }
        }

        foreach (var link in targets)
        {
            link.Sink.Close(reasonCode);
            CloseLink(link, DisconnectKind.Administrative);
        }

        return targets.Count;
    }

    public BrokerStatistics Statistics
    {
        get
        {
            // No lock: a hook may read the statistics while the engine holds a session's lock.
            return new BrokerStatistics(Volatile.Read(ref _connected), Volatile.Read(ref _sessionCount), Retained.Count,
                Interlocked.Read(ref _received), Interlocked.Read(ref _delivered), Interlocked.Read(ref _dropped), Interlocked.Read(ref _willsAfterRestart));
        }
    }

    /// <summary>
    /// Fires in <see cref="StopAsync"/>, once the connections with a session are closed. A host hands it to
    /// <see cref="RunConnectionAsync"/> so connections that have not sent CONNECT yet end with the broker, not earlier:
    /// clients in the same process stop first and say goodbye.
    /// </summary>
    public CancellationToken Stopping => _stoppingSource.Token;

    /// <summary>
    /// Closes every connection with ServerShuttingDown and commits the store. Wills are not published now but stay
    /// stored, and come after the restart as after a crash: a client reconnecting within its will delay never has its will sent.
    /// </summary>
    public async Task StopAsync(CancellationToken ct)
    {
        var links = new List<SessionLink>();
        lock (_sessionsGate)
        {
            _stopping = true;
            foreach (var session in _sessions.Values)
            {
                if (session.Link is { } link)
                {
                    links.Add(link);
                }
            }
        }

        foreach (var link in links)
        {
            link.Sink.Close(ReasonCode.ServerShuttingDown);
            CloseLink(link, DisconnectKind.Administrative, publishWill: false);
        }
        _stoppingSource.Cancel();

        await Store.CommitAsync(ct).ConfigureAwait(false);
    }

    public ValueTask DisposeAsync()
    {
        lock (_sessionsGate)
        {
            _stopping = true;
            foreach (var session in _sessions.Values)
            {
                session.StopTimers();
            }
        }

        return ValueTask.CompletedTask;
    }

    public async ValueTask<ISessionHandler?> ConnectAsync(ConnectPacket connect, ClientEndpoint endpoint, IClientSink sink, CancellationToken cancellationToken)
    {
        var v5 = connect.Version == MqttVersion.V500;
        string? assigned = null;
        if (connect.ClientId.Length == 0)
        {
            if (connect.Version == MqttVersion.V310 || (!v5 && !connect.CleanStart))
            {
                // 3.1.1 allows an empty id only with a clean session (MQTT-3.1.3-8); 3.1 never.
                sink.Send(new ConnAckPacket { ReasonCode = ReasonCode.ClientIdentifierNotValid });
                return null;
            }

            connect.ClientId = assigned = "auto-" + Guid.NewGuid().ToString("N");
        }

        if (v5 && connect.AuthenticationMethod is not null)
        {
            // Enhanced authentication (AUTH exchanges) is not supported: refused, counted and logged like a bad packet.
            Hooks.OnProtocolViolation(endpoint, connect.ClientId, ReasonCode.BadAuthenticationMethod,
                $"CONNECT asks for enhanced authentication ({connect.AuthenticationMethod}), which this broker does not support");
            sink.Send(new ConnAckPacket { ReasonCode = ReasonCode.BadAuthenticationMethod });
            return null;
        }

        ConnectDecision decision;
        try
        {
            decision = await Hooks.AuthenticateAsync(connect, endpoint, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            Logger.LogError(e, "Authentication of {ClientId} failed", connect.ClientId);
            decision = ConnectDecision.Refuse(ReasonCode.UnspecifiedError);
        }

        if (!decision.Accepted)
        {
            sink.Send(new ConnAckPacket { ReasonCode = decision.ReasonCode, ReasonString = v5 ? decision.ReasonString : null });
            return null;
        }

        var client = new ClientContext(connect.ClientId, decision.Identity, endpoint, connect.Version, decision.Limits);
        var expiry = v5
            ? Math.Min(connect.SessionExpiryInterval, Options.MaxSessionExpiry)
            : connect.CleanStart ? 0 : Options.MaxSessionExpiry;
        var wills = new List<PendingWill>();
        var takenOver = new List<SessionLink>(1);
        SessionLink link;
        bool present;
        ConnAckPacket connAck;
        var storeChanged = false;
        lock (_sessionsGate)
        {
            if (_stopping)
            {
                sink.Send(new ConnAckPacket { ReasonCode = ReasonCode.ServerUnavailable });
                return null;
            }

            _sessions.TryGetValue(connect.ClientId, out var session);
            if (session?.Identity is { } owner && owner != decision.Identity)
            {
                // A session belongs to the identity that made it: another identity may not take it over or read its queue.
                sink.Send(new ConnAckPacket { ReasonCode = ReasonCode.NotAuthorized, ReasonString = v5 ? "client id belongs to another identity" : null });
                return null;
            }

            if (session is not null)
            {
                // Whatever happens to a stored session now (taken over, ended, resumed) changes the store.
                storeChanged = session.QueuesOffline;
                if (session.Link is { } old && session.Detach(old, DisconnectKind.TakenOver, publishWill: true, wills, out _))
                {
                    old.Sink.Close(ReasonCode.SessionTakenOver);
                    takenOver.Add(old);
                }

                if (connect.CleanStart || session.ExpiryInterval == 0)
                {
                    session.End(wills);
                    _sessions.Remove(connect.ClientId);
                    _sessionCount = _sessions.Count;
                    session = null;
                }
            }

            present = session is not null;
            if (session is null)
            {
                session = new Session(this, connect.ClientId);
                _sessions.Add(connect.ClientId, session);
                _sessionCount = _sessions.Count;
            }

            link = new SessionLink(session, sink, client, connect);
            Interlocked.Increment(ref _connected);
            storeChanged |= session.Attach(link, expiry);
            connAck = BuildConnAck(connect, present, expiry, assigned);
        }

        foreach (var old in takenOver)
        {
            Hooks.OnDisconnected(old.Client, DisconnectKind.TakenOver);
        }

        Hooks.OnConnected(client, present);
        PublishWills(wills);
        if (storeChanged)
        {
            // CONNACK promises the session (and its delayed will) as PUBACK promises a message: only once it is durable.
            // The connection reads nothing more meanwhile; the session queues what it would send.
            try
            {
                await Store.CommitAsync(CancellationToken.None).ConfigureAwait(false);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                Logger.LogError(e, "Session store commit failed; closing {ClientId} before CONNACK", connect.ClientId);
                sink.Close(ReasonCode.UnspecifiedError, "storage failure");
                return link;
            }
        }

        link.Session.Acknowledge(link, connAck);
        return link;
    }

    private ConnAckPacket BuildConnAck(ConnectPacket connect, bool present, uint expiry, string? assigned)
    {
        var ack = new ConnAckPacket { SessionPresent = present, ReasonCode = ReasonCode.Success };
        if (connect.Version != MqttVersion.V500)
        {
            return ack;
        }

        if (expiry != connect.SessionExpiryInterval)
        {
            ack.SessionExpiryInterval = expiry;
        }

        ack.ReceiveMaximum = Options.ReceiveMaximum;
        ack.TopicAliasMaximum = Options.TopicAliasMaximum;
        ack.RetainAvailable = true;
        ack.WildcardSubscriptionAvailable = true;
        ack.SubscriptionIdentifiersAvailable = true;
        ack.SharedSubscriptionAvailable = true;
        ack.MaximumPacketSize = (uint)Options.MaxPacketSize;
        ack.AssignedClientIdentifier = assigned;
        if (Options.ServerKeepAlive > 0 && connect.KeepAlive != Options.ServerKeepAlive && (connect.KeepAlive == 0 || connect.KeepAlive > Options.ServerKeepAlive))
        {
            ack.ServerKeepAlive = Options.ServerKeepAlive;
        }

        if (connect.RequestResponseInformation)
        {
            // A prefix no wildcard subscription starting with + or # can reach (MQTT-4.7.2-1).
            ack.ResponseInformation = "$response/" + connect.ClientId + "/";
        }

        return ack;
    }

    /// <summary>The connection behind <paramref name="link"/> ended: detach it, publish or schedule its will, end a session that does not outlive it.</summary>
    internal void CloseLink(SessionLink link, DisconnectKind kind, bool publishWill = true)
    {
        var wills = new List<PendingWill>();
        lock (_sessionsGate)
        {
            var session = link.Session;
            if (!session.Detach(link, kind, publishWill, wills, out var ended))
            {
                return;
            }

            if (ended)
            {
                session.End(wills);
                if (_sessions.TryGetValue(session.ClientId, out var current) && current == session)
                {
                    _sessions.Remove(session.ClientId);
                    _sessionCount = _sessions.Count;
                }
            }
        }

        Hooks.OnDisconnected(link.Client, kind);
        PublishWills(wills);
    }

    /// <summary>The engine found a protocol error in what the client sent: count it, close with its reason, publish the will.</summary>
    internal void Violation(SessionLink link, byte reasonCode, string message)
    {
        Hooks.OnProtocolViolation(link.Client.Endpoint, link.Client.ClientId, reasonCode, message);
        link.Sink.Close(reasonCode, message);
        CloseLink(link, DisconnectKind.ProtocolError);
    }

    /// <summary>The session's expiry timer fired: end it if it is still offline and due. False when it is not due yet.</summary>
    internal bool TryExpire(Session session)
    {
        var wills = new List<PendingWill>();
        List<Outbound> held;
        lock (_sessionsGate)
        {
            if (!_sessions.TryGetValue(session.ClientId, out var current) || current != session || session.IsOnline)
            {
                return true;
            }

            if (!session.IsExpired(NowUnixMs))
            {
                return false;
            }

            held = session.End(wills);
            _sessions.Remove(session.ClientId);
            _sessionCount = _sessions.Count;
        }

        foreach (var outbound in held)
        {
            OnDropped();
            Hooks.OnMessageDropped(session.ClientId, outbound.Message, DropReason.SessionExpired);
        }

        if (held.Count > 0)
        {
            Logger.LogInformation("Session {ClientId} expired with {Count} messages undelivered", session.ClientId, held.Count);
        }

        PublishWills(wills);
        return true;
    }

    private void PublishWills(List<PendingWill> wills)
    {
        foreach (var will in wills)
        {
            PublishWill(will);
        }
    }

    /// <summary>Publishes a will under its connection's access rights, then forgets the stored copy.</summary>
    internal void PublishWill(PendingWill will)
    {
        var (message, client, restored) = will;
        if (!Hooks.MayPublish(client, message.Topic))
        {
            OnDropped();
            Hooks.OnMessageDropped(client.ClientId, message, DropReason.NotAuthorized);
        }
        else
        {
            var needsCommit = false;
            Route(message, null, ref needsCommit);
            if (needsCommit)
            {
                ObserveCommit(Store.CommitAsync());
            }

            if (restored)
            {
                Interlocked.Increment(ref _willsAfterRestart);
            }
        }

        // After routing: a crash in between publishes it again after the restart rather than never. The client id's
        // session may hold a newer will by now (a reconnect), stored under the same key: that one stays.
        lock (_sessionsGate)
        {
            if (!_sessions.TryGetValue(client.ClientId, out var session) || !session.HoldsStoredWill)
            {
                Store.DeleteWill(client.ClientId);
            }
        }
    }

    /// <summary>The client a stored will is published as: its identity and listener, for the same access check as live.</summary>
    internal ClientContext RestoredWillClient(StoredWill will) =>
        new(will.ClientId, will.Identity, new ClientEndpoint(will.Listener, "(restored will)", false), MqttVersion.V500, RestoredLimits);

    /// <summary>
    /// Retains (or clears) the message, then hands it to every matching subscriber once and to one member of each
    /// matching share group. Returns how many took it, or -1 when the publisher's retained quota refused it.
    /// </summary>
    internal int Route(ApplicationMessage message, ClientLimits? limits, ref bool needsCommit)
    {
        if (message.Retain)
        {
            if (!Retained.TrySet(message, limits))
            {
                return -1;
            }

            if (message.Payload.IsEmpty)
            {
                Store.DeleteRetained(message.Topic);
            }
            else
            {
                Store.SaveRetained(message);
            }

            needsCommit = true;
        }

        // Re-entrant when an in-process receiver publishes from inside its callback: it then gets fresh buffers.
        var buffers = t_buffers ?? new RouteBuffers();
        t_buffers = null;
        try
        {
            Tree.Match(message.Topic, buffers.Direct, buffers.Shared);
            var route = new RouteContext(message, message.ExpiresAtUnixMs != 0 ? NowUnixMs : 0);
            if (buffers.Direct.Count > 1)
            {
                buffers.Direct.Sort(s_byOwner);
            }

            var direct = CollectionsMarshal.AsSpan(buffers.Direct);
            var start = 0;
            for (var i = 1; i <= direct.Length; i++)
            {
                if (i == direct.Length || direct[i].Owner != direct[start].Owner)
                {
                    if (direct[start].Owner.Deliver(ref route, direct[start..i]))
                    {
                        route.Deliveries++;
                    }

                    start = i;
                }
            }

            foreach (var group in CollectionsMarshal.AsSpan(buffers.Shared))
            {
                if (group.Deliver(ref route))
                {
                    route.Deliveries++;
                }
            }

            needsCommit |= route.NeedsCommit;
            return route.Deliveries;
        }
        finally
        {
            buffers.Direct.Clear();
            buffers.Shared.Clear();
            t_buffers = buffers;
        }
    }

    internal ApplicationMessage CreateMessage(PublishPacket packet, string clientId) => new()
    {
        Topic = packet.Topic,
        Payload = packet.Payload,
        QoS = packet.QoS,
        Retain = packet.Retain,
        Properties = packet.Properties,
        ExpiresAtUnixMs = ExpiresAt(packet.Properties),
        SenderClientId = clientId,
    };

    internal ApplicationMessage CreateWill(string clientId, WillMessage will) => new()
    {
        Topic = will.Topic,
        Payload = will.Payload,
        QoS = Math.Min(will.QoS, (byte)2),
        Retain = will.Retain,
        Properties = will.Properties,
        ExpiresAtUnixMs = ExpiresAt(will.Properties),
        SenderClientId = clientId,
    };

    /// <summary>A will kept in the store, as published now (its message expiry counts from now).</summary>
    internal ApplicationMessage RestoreWill(ApplicationMessage stored) => new()
    {
        Topic = stored.Topic,
        Payload = stored.Payload,
        QoS = stored.QoS,
        Retain = stored.Retain,
        Properties = stored.Properties,
        ExpiresAtUnixMs = ExpiresAt(stored.Properties),
        SenderClientId = stored.SenderClientId,
    };

    private long ExpiresAt(MessageProperties? properties) =>
        properties?.MessageExpiryInterval is { } seconds and > 0 ? NowUnixMs + (seconds * 1000L) : 0;

    internal long NextMessageId() => Interlocked.Increment(ref _lastMessageId);

    internal void OnReceived() => Interlocked.Increment(ref _received);

    internal void OnDelivered() => Interlocked.Increment(ref _delivered);

    internal void OnDropped() => Interlocked.Increment(ref _dropped);

    internal void OnDisconnected() => Interlocked.Decrement(ref _connected);

    private void ObserveCommit(ValueTask commit)
    {
        if (commit.IsCompleted)
        {
            if (!commit.IsCompletedSuccessfully)
            {
                Logger.LogError(commit.AsTask().Exception, "Session store commit failed");
            }

            return;
        }

        commit.AsTask().ContinueWith(
            static (t, s) => ((ILogger)s!).LogError(t.Exception, "Session store commit failed"),
            Logger, CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted, TaskScheduler.Default);
    }

    private sealed class RouteBuffers
    {
        public readonly List<Subscription> Direct = [];
        public readonly List<SharedGroup> Shared = [];
    }
}

/// <summary>A will on its way to publication; <paramref name="Restored"/>: left by the broker's previous run.</summary>
internal readonly record struct PendingWill(ApplicationMessage Message, ClientContext Client, bool Restored);

/// <summary>Receives a message for an in-process client, on the publisher's thread; must not block.</summary>
public delegate void LocalReceiver(ApplicationMessage message);

/// <summary>A point-in-time view of the broker's counters.</summary>
/// <param name="ConnectedClients">Network connections with a session now.</param>
/// <param name="Sessions">Sessions, connected or waiting for their client.</param>
/// <param name="MessagesReceived">PUBLISHes accepted from clients, in-process clients and the broker itself.</param>
/// <param name="MessagesDelivered">PUBLISHes handed to connections (first sends, not resends).</param>
/// <param name="MessagesDropped">Messages that did not reach a subscriber (see <see cref="DropReason"/>).</param>
/// <param name="WillsPublishedAfterRestart">Wills the previous run left stored (its connections ended by a crash or a stop) published since start.</param>
public sealed record BrokerStatistics(int ConnectedClients, int Sessions, int RetainedMessages, long MessagesReceived, long MessagesDelivered, long MessagesDropped,
    long WillsPublishedAfterRestart);
