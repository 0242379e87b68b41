using Microsoft.Extensions.Logging.Abstractions;
using Nightlight.Broker.Core;
using Nightlight.Broker.Core.Engine;
using Nightlight.Broker.Core.Packets;
using Nightlight.Broker.Core.Persistence;

namespace Nightlight.Tests.Broker;

/// <summary>A broker engine driven through ISessionRegistry and ISessionHandler, with recording sinks, hooks and store and a manual clock.</summary>
sealed class EngineHarness : IAsyncDisposable
{
    public EngineHarness(BrokerCoreOptions? options = null, ISessionStore? store = null, ManualTime? time = null)
    {
        Options = options ?? new BrokerCoreOptions();
        RawStore = store ?? new MemoryStore();
        Time = time ?? new ManualTime();
        Broker = new MqttBroker(Options, Hooks, RawStore, NullLogger.Instance, Time);
        Broker.StartAsync(CancellationToken.None).GetAwaiter().GetResult();
    }

    public BrokerCoreOptions Options { get; }

    public RecordingHooks Hooks { get; } = new();

    public ISessionStore RawStore { get; }

    public MemoryStore Store => (MemoryStore)RawStore;

    public ManualTime Time { get; }

    public MqttBroker Broker { get; }

    public Client Connect(string clientId, MqttVersion version = MqttVersion.V500, bool clean = true, uint expiry = 0,
        WillMessage? will = null, ushort receiveMaximum = ushort.MaxValue, Action<ConnectPacket>? configure = null)
    {
        var connect = new ConnectPacket
        {
            Version = version,
            ClientId = clientId,
            CleanStart = clean,
            KeepAlive = 60,
            SessionExpiryInterval = expiry,
            Will = will,
            ReceiveMaximum = receiveMaximum,
        };
        configure?.Invoke(connect);
        var sink = new RecordingSink(version);
        var handler = Broker.ConnectAsync(connect, new ClientEndpoint("memory", "test", true), sink, CancellationToken.None).AsTask().GetAwaiter().GetResult();
        return new Client(handler, sink, connect);
    }

    public async ValueTask DisposeAsync() => await Broker.DisposeAsync();
}

/// <summary>One test client: the engine's handler for its connection and what the engine sent it.</summary>
sealed class Client(ISessionHandler? handler, RecordingSink sink, ConnectPacket connect)
{
    ushort _nextId;

    public ISessionHandler Handler => handler ?? throw new InvalidOperationException("The connection was refused.");

    public bool Refused => handler is null;

    public RecordingSink Sink { get; } = sink;

    public ConnectPacket Connect { get; } = connect;

    public ConnAckPacket ConnAck => Sink.Control.OfType<ConnAckPacket>().Single();

    public ushort NextId() => ++_nextId;

    public void Subscribe(string filter, byte qos = 2, bool noLocal = false, bool retainAsPublished = false, byte retainHandling = 0, uint? identifier = null) =>
        Handler.OnSubscribe(new SubscribePacket
        {
            PacketId = NextId(),
            Subscriptions = [new TopicSubscription(filter, qos, noLocal, retainAsPublished, retainHandling)],
            SubscriptionIdentifier = identifier,
        });

    public SubAckPacket LastSubAck => Sink.Control.OfType<SubAckPacket>().Last();

    public ushort Publish(string topic, string payload = "x", byte qos = 0, bool retain = false, uint? expiry = null, ushort? packetId = null, bool dup = false)
    {
        var id = qos == 0 ? (ushort)0 : packetId ?? NextId();
        Handler.OnPublish(new PublishPacket
        {
            Topic = topic,
            Payload = System.Text.Encoding.UTF8.GetBytes(payload),
            QoS = qos,
            Retain = retain,
            PacketId = id,
            Dup = dup,
            Properties = expiry is null ? null : new MessageProperties { MessageExpiryInterval = expiry },
        });
        return id;
    }

    public void Ack(PacketType kind, ushort packetId, byte reason = 0) => Handler.OnPublishAck(new PublishAckPacket(kind) { PacketId = packetId, ReasonCode = reason });

    /// <summary>The connection ends as the codec reports it.</summary>
    public void Lose(DisconnectKind kind = DisconnectKind.ConnectionLost) => _ = Handler.OnConnectionClosedAsync(kind).AsTask();

    public void Disconnect(byte reason = ReasonCode.NormalDisconnection, uint? expiry = null)
    {
        Handler.OnDisconnect(new DisconnectPacket { ReasonCode = reason, SessionExpiryInterval = expiry });
        _ = Handler.OnConnectionClosedAsync(DisconnectKind.Clean).AsTask();
    }

    public List<string> Payloads => Sink.Publishes.Select(p => System.Text.Encoding.UTF8.GetString(p.Message.Payload.Span)).ToList();

    public List<T> Acks<T>() where T : MqttPacket => Sink.Control.OfType<T>().ToList();

    public List<PublishAckPacket> AcksOf(PacketType kind) => Sink.Control.OfType<PublishAckPacket>().Where(a => a.Kind == kind).ToList();
}

sealed record SentPublish(ApplicationMessage Message, ushort PacketId, byte QoS, bool Retain, bool Dup, uint[] SubscriptionIdentifiers)
{
    public string Text => System.Text.Encoding.UTF8.GetString(Message.Payload.Span);
}

/// <summary>Records what the engine sends to one connection; never blocks, as a real connection's write queue.</summary>
sealed class RecordingSink(MqttVersion version) : IClientSink
{
    readonly Lock _gate = new();
    readonly List<MqttPacket> _control = [];
    readonly List<SentPublish> _publishes = [];

    public MqttVersion Version { get; } = version;

    public long PendingBytes { get; set; }

    /// <summary>Largest payload the "client" accepts (0: any).</summary>
    public int MaxPayload { get; set; }

    public byte? ClosedWith { get; private set; }

    public List<MqttPacket> Control
    {
        get { lock (_gate) { return [.. _control]; } }
    }

    public List<SentPublish> Publishes
    {
        get { lock (_gate) { return [.. _publishes]; } }
    }

    public void Send(MqttPacket packet)
    {
        lock (_gate) { _control.Add(packet); }
    }

    public bool SendPublish(ApplicationMessage message, ushort packetId, byte qos, bool retain, bool dup, ReadOnlySpan<uint> subscriptionIdentifiers)
    {
        if (MaxPayload > 0 && message.Payload.Length > MaxPayload)
        {
            return false;
        }

        var ids = subscriptionIdentifiers.ToArray();
        lock (_gate) { _publishes.Add(new SentPublish(message, packetId, qos, retain, dup, ids)); }
        return true;
    }

    public void Close(byte reasonCode, string? reasonString = null) => ClosedWith ??= reasonCode;

    public void Clear()
    {
        lock (_gate)
        {
            _control.Clear();
            _publishes.Clear();
        }
    }
}

sealed class RecordingHooks : IBrokerHooks
{
    public Func<ConnectPacket, ConnectDecision> Authenticate { get; set; } = _ => ConnectDecision.Accept(null, ClientLimits.Unlimited);

    public Func<ClientContext, string, bool> SubscribeCheck { get; set; } = (_, _) => true;

    public Func<ClientContext, string, bool> PublishCheck { get; set; } = (_, _) => true;

    public List<(string ClientId, string Topic, DropReason Reason)> Dropped { get; } = [];

    public List<(string ClientId, DisconnectKind Kind)> Disconnected { get; } = [];

    public List<(string? ClientId, byte Reason)> Violations { get; } = [];

    public ValueTask<ConnectDecision> AuthenticateAsync(ConnectPacket connect, ClientEndpoint endpoint, CancellationToken cancellationToken) =>
        ValueTask.FromResult(Authenticate(connect));

    public bool MaySubscribe(ClientContext client, string filter) => SubscribeCheck(client, filter);

    public bool MayPublish(ClientContext client, string topic) => PublishCheck(client, topic);

    public void OnConnected(ClientContext client, bool sessionPresent) { }

    public void OnDisconnected(ClientContext client, DisconnectKind kind)
    {
        lock (Disconnected) { Disconnected.Add((client.ClientId, kind)); }
    }

    public void OnMessageDropped(string clientId, ApplicationMessage message, DropReason reason)
    {
        lock (Dropped) { Dropped.Add((clientId, message.Topic, reason)); }
    }

    public void OnProtocolViolation(ClientEndpoint endpoint, string? clientId, byte reasonCode, string message)
    {
        lock (Violations) { Violations.Add((clientId, reasonCode)); }
    }

    public void OnMessagePublished(ClientContext client, ApplicationMessage message) { }
}

/// <summary>A clock that moves only when told; timers fire on the test's thread, in due order.</summary>
sealed class ManualTime : TimeProvider
{
    readonly List<ManualTimer> _timers = [];
    DateTimeOffset _now = new(2026, 12, 6, 12, 0, 0, TimeSpan.Zero);

    public override DateTimeOffset GetUtcNow() => _now;

    public override long GetTimestamp() => _now.UtcTicks;

    public override long TimestampFrequency => TimeSpan.TicksPerSecond;

    public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
    {
        var timer = new ManualTimer(this, callback, state);
        timer.Change(dueTime, period);
        return timer;
    }

    public void Advance(TimeSpan by)
    {
        var target = _now + by;
        while (true)
        {
            ManualTimer? next;
            lock (_timers)
            {
                next = _timers.Where(t => t.Due <= target).OrderBy(t => t.Due).FirstOrDefault();
                if (next is null)
                {
                    break;
                }

                _timers.Remove(next);
            }

            _now = next.Due!.Value > _now ? next.Due.Value : _now;
            next.Fire();
        }

        _now = target;
    }

    sealed class ManualTimer(ManualTime time, TimerCallback callback, object? state) : ITimer
    {
        public DateTimeOffset? Due { get; private set; }

        public bool Change(TimeSpan dueTime, TimeSpan period)
        {
            lock (time._timers)
            {
                time._timers.Remove(this);
                Due = dueTime == Timeout.InfiniteTimeSpan ? null : time._now + dueTime;
                if (Due is not null)
                {
                    time._timers.Add(this);
                }
            }

            return true;
        }

        public void Fire() => callback(state);

        public void Dispose()
        {
            lock (time._timers) { time._timers.Remove(this); }
        }

        public ValueTask DisposeAsync()
        {
            Dispose();
            return ValueTask.CompletedTask;
        }
    }
}

/// <summary>Keeps what the engine stores, as a file store would, and gives it back from Load: a restart in memory.</summary>
sealed class MemoryStore : ISessionStore
{
    readonly Dictionary<string, StoredSession> _sessions = [];
    readonly Dictionary<string, List<StoredDelivery>> _deliveries = [];
    readonly Dictionary<long, ApplicationMessage> _messages = [];
    readonly Dictionary<string, ApplicationMessage> _retained = [];
    readonly Dictionary<string, HashSet<ushort>> _inbound = [];
    readonly Dictionary<string, StoredWill> _wills = [];
    long _lastMessageId;

    public int Commits { get; private set; }

    /// <summary>When set, commits complete only when the test completes this source.</summary>
    public TaskCompletionSource? PendingCommit { get; set; }

    public bool HasSession(string clientId)
    {
        lock (this) { return _sessions.ContainsKey(clientId); }
    }

    public List<StoredDelivery> DeliveriesOf(string clientId)
    {
        lock (this) { return _deliveries.TryGetValue(clientId, out var list) ? [.. list] : []; }
    }

    public BrokerSnapshot Load()
    {
        lock (this)
        {
            var snapshot = new BrokerSnapshot { LastMessageId = _lastMessageId };
            foreach (var (id, session) in _sessions)
            {
                snapshot.Sessions.Add((session, _deliveries.TryGetValue(id, out var d) ? [.. d] : []));
            }

            foreach (var (id, message) in _messages)
            {
                snapshot.Messages[id] = message;
            }

            snapshot.Retained.AddRange(_retained.Values);
            foreach (var (id, set) in _inbound)
            {
                snapshot.InboundQoS2[id] = [.. set];
            }

            foreach (var (id, will) in _wills)
            {
                snapshot.Wills[id] = will;
            }

            return snapshot;
        }
    }

    public void SaveSession(StoredSession session)
    {
        lock (this) { _sessions[session.ClientId] = session; }
    }

    public void DeleteSession(string clientId)
    {
        lock (this)
        {
            _sessions.Remove(clientId);
            _deliveries.Remove(clientId);
            _inbound.Remove(clientId);
            _wills.Remove(clientId);
        }
    }

    public void SaveWill(StoredWill will)
    {
        lock (this) { _wills[will.ClientId] = will; }
    }

    public void DeleteWill(string clientId)
    {
        lock (this) { _wills.Remove(clientId); }
    }

    public void SaveMessage(long messageId, ApplicationMessage message)
    {
        lock (this)
        {
            Assert.False(_messages.ContainsKey(messageId), "a message is saved once");
            _messages[messageId] = message;
            _lastMessageId = Math.Max(_lastMessageId, messageId);
        }
    }

    public void Enqueue(string clientId, StoredDelivery delivery)
    {
        lock (this)
        {
            Assert.True(_messages.ContainsKey(delivery.MessageId), "SaveMessage comes before Enqueue");
            if (!_deliveries.TryGetValue(clientId, out var list))
            {
                _deliveries[clientId] = list = [];
            }

            list.Add(delivery);
        }
    }

    public void UpdateDelivery(string clientId, long messageId, ushort packetId, bool released)
    {
        lock (this)
        {
            var list = _deliveries[clientId];
            var i = list.FindIndex(d => d.MessageId == messageId);
            list[i] = list[i] with { PacketId = packetId, Released = released };
        }
    }

    public void Complete(string clientId, long messageId)
    {
        lock (this)
        {
            if (_deliveries.TryGetValue(clientId, out var list))
            {
                list.RemoveAll(d => d.MessageId == messageId);
            }
        }
    }

    public void SaveRetained(ApplicationMessage message)
    {
        lock (this) { _retained[message.Topic] = message; }
    }

    public void DeleteRetained(string topic)
    {
        lock (this) { _retained.Remove(topic); }
    }

    public void SaveInboundQoS2(string clientId, ushort packetId, bool pending)
    {
        lock (this)
        {
            if (!_inbound.TryGetValue(clientId, out var set))
            {
                _inbound[clientId] = set = [];
            }

            if (pending)
            {
                set.Add(packetId);
            }
            else
            {
                set.Remove(packetId);
            }
        }
    }

    public ValueTask CommitAsync(CancellationToken cancellationToken = default)
    {
        lock (this)
        {
            Commits++;
        }

        return PendingCommit is { } pending ? new ValueTask(pending.Task) : ValueTask.CompletedTask;
    }

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}
