using Microsoft.Extensions.Logging.Abstractions;
using Nightlight.Broker.Core;
using Nightlight.Broker.Core.Engine;
using Nightlight.Broker.Core.Packets;
using Nightlight.Broker.Core.Persistence;

namespace Nightlight.Tests.Broker;

/// <summary>The engine's hot path: what routing allocates, and many threads publishing, acknowledging and subscribing at once.</summary>
public class EngineLoadTests
{
    /// <summary>A connection that takes everything and keeps nothing.</summary>
    sealed class CountingSink(MqttVersion version) : IClientSink
    {
        long _publishes;

        public long Publishes => Interlocked.Read(ref _publishes);

        public MqttVersion Version { get; } = version;

        public long PendingBytes => 0;

        public void Send(MqttPacket packet) { }

        public bool SendPublish(ApplicationMessage message, ushort packetId, byte qos, bool retain, bool dup, ReadOnlySpan<uint> subscriptionIdentifiers)
        {
            Interlocked.Increment(ref _publishes);
            return true;
        }

        public void Close(byte reasonCode, string? reasonString = null) { }
    }

    static (ISessionHandler Handler, CountingSink Sink) Connect(MqttBroker broker, string clientId, params string[] filters)
    {
        var sink = new CountingSink(MqttVersion.V500);
        var handler = broker.ConnectAsync(new ConnectPacket { Version = MqttVersion.V500, ClientId = clientId, CleanStart = true },
            new ClientEndpoint("memory", "test", true), sink, CancellationToken.None).AsTask().GetAwaiter().GetResult()!;
        if (filters.Length > 0)
        {
            handler.OnSubscribe(new SubscribePacket { PacketId = 1, Subscriptions = filters.Select(f => new TopicSubscription(f, 0)).ToList() });
        }

        return (handler, sink);
    }

    /// <summary>A started broker with default options, recording hooks and no store.</summary>
    static async Task<MqttBroker> StartBrokerAsync()
    {
        var broker = new MqttBroker(new BrokerCoreOptions(), new RecordingHooks(), NullSessionStore.Instance, NullLogger.Instance);
        await broker.StartAsync(CancellationToken.None);
        return broker;
    }

    [Fact]
    public async Task Routing_a_qos0_message_allocates_nothing_per_subscriber()
    {
        await using var broker = await StartBrokerAsync();
        var sinks = new List<CountingSink>();
        for (var i = 0; i < 1000; i++)
        {
            Connect(broker, $"dev{i}", $"dev{i}/commands");
        }

        for (var i = 0; i < 20; i++)
        {
            sinks.Add(Connect(broker, $"server{i}", "+/telemetry", "#").Sink); // overlapping: delivered once each
        }

        var message = new ApplicationMessage { Topic = "dev7/telemetry", Payload = "{\"light\": 412}"u8.ToArray() };
        broker.Publish(message); // warm up the thread's buffers
        const int publishes = 20_000;
        var before = GC.GetAllocatedBytesForCurrentThread();
        for (var i = 0; i < publishes; i++)
        {
            broker.Publish(message);
        }

        var perPublish = (GC.GetAllocatedBytesForCurrentThread() - before) / (double)publishes;
        Assert.All(sinks, s => Assert.Equal(publishes + 1, s.Publishes));
        Assert.True(perPublish < 1, $"{perPublish:F1} bytes allocated per publish to 20 subscribers");
    }

    [Fact]
    public async Task Many_threads_publishing_acknowledging_and_resubscribing_lose_nothing_and_never_deadlock()
    {
        await using var broker = await StartBrokerAsync();
        var (serverHandler, serverSink) = Connect(broker, "server");
        serverHandler.OnSubscribe(new SubscribePacket { PacketId = 1, Subscriptions = [new TopicSubscription("+/telemetry", 0)] });
        var churn = Connect(broker, "churn").Handler;

        const int threads = 4;
        const int perThread = 5_000;
        await PublishWhileAsync(broker, threads, perThread, qos: 1, (started, stop) =>
        {
            for (ushort id = 1; !stop.IsCancellationRequested; id = (ushort)(id % 60000 + 1))
            {
                churn.OnSubscribe(new SubscribePacket { PacketId = id, Subscriptions = [new TopicSubscription("+/telemetry", 1)] });
                churn.OnUnsubscribe(new UnsubscribePacket { PacketId = id, Filters = ["+/telemetry"] });
                started();
            }

            return 0;
        });
        Assert.Equal(threads * perThread, serverSink.Publishes);
        Assert.Equal(threads * perThread, broker.Statistics.MessagesReceived);
    }

    /// <summary>
    /// Runs <paramref name="churn"/> on its own thread (it calls its first argument once it is under way and stops at
    /// the token), then <paramref name="threads"/> devices publishing <paramref name="perThread"/> messages each on
    /// <c>dev{t}/telemetry</c> with payload <c>t:i</c>; returns what the churn returns once the devices are done.
    /// </summary>
    static async Task<T> PublishWhileAsync<T>(MqttBroker broker, int threads, int perThread, byte qos, Func<Action, CancellationToken, T> churn)
    {
        using var stop = new CancellationTokenSource();
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var churning = Task.Run(() => churn(() => started.TrySetResult(), stop.Token));
        await started.Task;
        var publishers = Enumerable.Range(0, threads).Select(t => Task.Run(() =>
        {
            var (handler, _) = Connect(broker, $"dev{t}");
            for (var i = 0; i < perThread; i++)
            {
                var id = qos == 0 ? (ushort)0 : (ushort)(i % 60000 + 1);
                handler.OnPublish(new PublishPacket { Topic = $"dev{t}/telemetry", QoS = qos, PacketId = id, Payload = System.Text.Encoding.UTF8.GetBytes($"{t}:{i}") });
                if (qos == 2)
                {
                    // The device's side of QoS 2: PUBREL after the broker's PUBREC, which comes at once here.
                    handler.OnPublishAck(new PublishAckPacket(PacketType.PubRel) { PacketId = id });
                }
            }
        })).ToArray();

        var all = Task.WhenAll(publishers);
        Assert.Same(all, await Task.WhenAny(all, Task.Delay(TimeSpan.FromSeconds(60))));
        stop.Cancel();
        return await churning;
    }

    /// <summary>
    /// MQTT-3.8.4-3: a SUBSCRIBE repeating a filter replaces the subscription without interrupting the flow. A server
    /// that re-subscribes at every reconnect lost a reading that was being routed at that moment.
    /// </summary>
    [Fact]
    public async Task Resubscribing_the_same_filter_while_devices_publish_loses_nothing()
    {
        await using var broker = await StartBrokerAsync();
        var (serverHandler, serverSink) = Connect(broker, "server", "+/telemetry");

        const int threads = 3;
        const int perThread = 20_000;
        var resubscribed = await PublishWhileAsync(broker, threads, perThread, qos: 0, (started, stop) =>
        {
            var count = 0;
            for (ushort id = 2; !stop.IsCancellationRequested; id = (ushort)(id % 60000 + 1))
            {
                serverHandler.OnSubscribe(new SubscribePacket { PacketId = id, Subscriptions = [new TopicSubscription("+/telemetry", (byte)(id % 2))] });
                count++;
                started();
            }

            return count;
        });

        Assert.True(resubscribed > 100, "the server hardly re-subscribed while the devices published");
        Assert.Equal(threads * perThread, serverSink.Publishes);
    }

    /// <summary>
    /// A member of a share group leaving (its clean session ends) while messages are routed to the group: each message
    /// reaches one of the members still there, none is lost on the one that left.
    /// </summary>
    [Fact]
    public async Task A_share_group_member_leaving_while_devices_publish_loses_nothing()
    {
        await using var broker = await StartBrokerAsync();
        var (_, stays) = Connect(broker, "server-a", "$share/servers/+/telemetry");

        const int threads = 3;
        const int perThread = 20_000;
        var (leaverReceived, visits) = await PublishWhileAsync(broker, threads, perThread, qos: 0, (started, stop) =>
        {
            long received = 0;
            var count = 0;
            while (!stop.IsCancellationRequested)
            {
                var (handler, sink) = Connect(broker, "server-b", "$share/servers/+/telemetry");
                handler.OnDisconnect(new DisconnectPacket { ReasonCode = ReasonCode.NormalDisconnection });
                handler.OnConnectionClosedAsync(DisconnectKind.Clean).AsTask().GetAwaiter().GetResult();
                received += sink.Publishes;
                count++;
                started();
            }

            return (received, count);
        });
        Assert.True(visits > 100, $"the second member joined and left only {visits} times while the devices published");
        Assert.Equal(threads * perThread, stays.Publishes + leaverReceived);
    }

    /// <summary>A connection that records each PUBLISH and PUBREL, in order, for its owner to answer.</summary>
    sealed class AckingSink(MqttVersion version) : IClientSink
    {
        /// <summary>PUBLISH: the payload; PUBREL: null.</summary>
        public System.Collections.Concurrent.ConcurrentQueue<(ushort PacketId, string? Payload)> Received { get; } = new();

        public MqttVersion Version { get; } = version;

        public long PendingBytes => 0;

        public void Send(MqttPacket packet)
        {
            if (packet is PublishAckPacket { Kind: PacketType.PubRel } release)
            {
                Received.Enqueue((release.PacketId, null));
            }
        }

        public bool SendPublish(ApplicationMessage message, ushort packetId, byte qos, bool retain, bool dup, ReadOnlySpan<uint> subscriptionIdentifiers)
        {
            Received.Enqueue((packetId, System.Text.Encoding.UTF8.GetString(message.Payload.Span)));
            return true;
        }

        public void Close(byte reasonCode, string? reasonString = null) { }
    }

    /// <summary>
    /// Application servers with kept sessions that lose their connection, or are taken over by their own next
    /// connection, again and again while devices publish, re-subscribing each time as a client library does. At QoS 1
    /// every message reaches a server at least once; at QoS 2 exactly once (the client keeps the packet ids it has
    /// received until their PUBREL, across connections, as MQTT asks). One server on <c>+/telemetry</c>, or two
    /// sharing it in a group.
    /// </summary>
    [Theory]
    [InlineData(1, 1)]
    [InlineData(2, 1)]
    [InlineData(1, 2)]
    [InlineData(2, 2)]
    public async Task Kept_sessions_reconnecting_while_devices_publish_get_every_message(int servers, byte qos)
    {
        await using var broker = await StartBrokerAsync();
        var filter = servers == 1 ? "+/telemetry" : "$share/servers/+/telemetry";
        (ISessionHandler Handler, AckingSink Sink) ConnectServer(int n)
        {
            var sink = new AckingSink(MqttVersion.V500);
            var handler = broker.ConnectAsync(new ConnectPacket { Version = MqttVersion.V500, ClientId = $"server{n}", CleanStart = false, SessionExpiryInterval = 300 },
                new ClientEndpoint("memory", "test", true), sink, CancellationToken.None).AsTask().GetAwaiter().GetResult()!;
            handler.OnSubscribe(new SubscribePacket { PacketId = 1, Subscriptions = [new TopicSubscription(filter, qos)] });
            return (handler, sink);
        }

        const int threads = 3;
        const int perThread = 5_000;
        var delivered = new Dictionary<string, int>();
        var awaitingRelease = Enumerable.Range(0, servers).Select(_ => new HashSet<ushort>()).ToArray();
        var connections = Enumerable.Range(0, servers).Select(ConnectServer).ToArray();
        // While the servers churn, one acknowledgement in seven is lost on its way, as when a connection drops right
        // after the client received a message: the broker sends that PUBLISH (or PUBREL) again on the next connection.
        var loseSome = true;
        var answered = 0;
        bool Lost() => loseSome && ++answered % 7 == 0;
        void AckAll()
        {
            for (var n = 0; n < servers; n++)
            {
                var (handler, sink) = connections[n];
                while (sink.Received.TryDequeue(out var r))
                {
                    if (r.Payload is null)
                    {
                        awaitingRelease[n].Remove(r.PacketId);
                        if (!Lost())
                        {
                            handler.OnPublishAck(new PublishAckPacket(PacketType.PubComp) { PacketId = r.PacketId });
                        }

                        continue;
                    }

                    // At QoS 2 a PUBLISH whose id waits for its PUBREL is the same message again: not handed on twice.
                    if (qos == 1 || awaitingRelease[n].Add(r.PacketId))
                    {
                        delivered[r.Payload] = delivered.GetValueOrDefault(r.Payload) + 1;
                    }

                    if (!Lost())
                    {
                        handler.OnPublishAck(new PublishAckPacket(qos == 1 ? PacketType.PubAck : PacketType.PubRec) { PacketId = r.PacketId });
                    }
                }
            }
        }

        var reconnects = await PublishWhileAsync(broker, threads, perThread, qos, (started, stop) =>
        {
            var count = 0;
            while (!stop.IsCancellationRequested)
            {
                AckAll();
                var n = count % servers;
                var old = connections[n];
                if (count / servers % 2 == 0)
                {
                    // The connection drops; the next one comes after.
                    old.Handler.OnConnectionClosedAsync(DisconnectKind.ConnectionLost).AsTask().GetAwaiter().GetResult();
                    connections[n] = ConnectServer(n);
                }
                else
                {
                    // The next connection takes the session over while the old one is still open.
                    connections[n] = ConnectServer(n);
                    old.Handler.OnConnectionClosedAsync(DisconnectKind.ConnectionLost).AsTask().GetAwaiter().GetResult();
                }

                count++;
                started();
            }

            return count;
        });
        Assert.True(reconnects > 20, $"the servers reconnected only {reconnects} times while the devices published");

        // One last reconnect of each, with nothing lost any more: whatever was queued or in flight comes now.
        AckAll();
        loseSome = false;
        for (var n = 0; n < servers; n++)
        {
            await connections[n].Handler.OnConnectionClosedAsync(DisconnectKind.ConnectionLost);
            connections[n] = ConnectServer(n);
        }

        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while ((delivered.Count < threads * perThread || awaitingRelease.Any(ids => ids.Count > 0)) && DateTime.UtcNow < deadline)
        {
            AckAll();
            await Task.Delay(10);
        }

        var all = Enumerable.Range(0, threads).SelectMany(t => Enumerable.Range(0, perThread).Select(i => $"{t}:{i}")).ToList();
        var missing = all.Where(p => !delivered.ContainsKey(p)).ToList();
        Assert.True(missing.Count == 0, $"{missing.Count} of {all.Count} never reached a server (first: {string.Join(", ", missing.Take(5))}); {reconnects} reconnects");
        if (qos == 2)
        {
            var twice = delivered.Where(d => d.Value > 1).Select(d => d.Key).ToList();
            Assert.True(twice.Count == 0, $"{twice.Count} of {all.Count} reached a server more than once at QoS 2 (first: {string.Join(", ", twice.Take(5))})");
        }
    }
}
