using System.Buffers;
using System.Collections.Concurrent;
using System.IO.Pipelines;
using System.Text;
using Microsoft.Extensions.Logging;
using Nightlight.Broker.Core;
using Nightlight.Broker.Core.Connection;
using Nightlight.Broker.Core.Engine;
using Nightlight.Broker.Core.Packets;
using Nightlight.Broker.Core.Persistence;
using static Nightlight.Tests.Broker.PacketBytes;

namespace Nightlight.Tests.Broker;

/// <summary>
/// MqttBroker and MqttConnection together over in-memory pipes, driven by raw packets written and read with the codec:
/// what a client on the wire would see.
/// </summary>
public sealed class ConnectionTests : IAsyncDisposable
{
    static readonly TimeSpan Patience = TimeSpan.FromSeconds(5);

    readonly BrokerCoreOptions _options = new() { ConnectTimeout = TimeSpan.FromSeconds(5) };
    readonly RecordingHooks _hooks = new();
    readonly CancellationTokenSource _stop = new();
    readonly ErrorLog _log = new();
    MqttBroker? _broker;

    MqttBroker Broker => _broker ??= StartBroker();

    MqttBroker StartBroker()
    {
        var broker = new MqttBroker(_options, _hooks, NullSessionStore.Instance, _log);
        broker.StartAsync(CancellationToken.None).GetAwaiter().GetResult();
        return broker;
    }

    public async ValueTask DisposeAsync()
    {
        Assert.True(_log.Errors.IsEmpty, string.Join("\n", _log.Errors));
        await _stop.CancelAsync();
        if (_broker is not null)
        {
            await _broker.DisposeAsync();
        }
        _stop.Dispose();
    }

    TestClient Open()
    {
        var toServer = new Pipe();
        var toClient = new Pipe();
        var transport = new DuplexPipe(toServer.Reader, toClient.Writer);
        var run = MqttConnection.RunAsync(transport, new ClientEndpoint("memory", "test", true), Broker, _options, _hooks,
            _log, TimeProvider.System, _stop.Token);
        return new TestClient(toServer.Writer, toClient.Reader, run);
    }

    async Task<TestClient> ConnectAsync(MqttVersion version, string clientId, Action<ConnectPacket>? configure = null)
    {
        var client = Open();
        client.Version = version;
        var connect = new ConnectPacket { Version = version, ClientId = clientId, CleanStart = true, KeepAlive = 60 };
        configure?.Invoke(connect);
        await client.SendAsync(connect);
        var connack = Assert.IsType<ConnAckPacket>(await client.ReceiveAsync());
        Assert.Equal(ReasonCode.Success, connack.ReasonCode);
        client.ConnAck = connack;
        return client;
    }

    static async Task SubscribeAsync(TestClient client, string filter, byte qos = 0)
    {
        await client.SendAsync(new SubscribePacket { PacketId = 1, Subscriptions = [new(filter, qos)] });
        var suback = Assert.IsType<SubAckPacket>(await client.ReceiveAsync());
        Assert.Equal([qos], suback.ReasonCodes);
    }

    public static TheoryData<MqttVersion> Versions => [MqttVersion.V311, MqttVersion.V500];

    // ---- connecting ----

    [Theory]
    [MemberData(nameof(Versions))]
    public async Task Connect_is_answered_with_connack_and_ping_with_pong(MqttVersion version)
    {
        var client = await ConnectAsync(version, "dev1nightlight_client");
        Assert.False(client.ConnAck!.SessionPresent);
        if (version == MqttVersion.V500)
        {
            Assert.Equal(_options.TopicAliasMaximum, client.ConnAck.TopicAliasMaximum);
        }
        await client.SendAsync(PingReqPacket.Instance);
        Assert.IsType<PingRespPacket>(await client.ReceiveAsync());
        await client.SendAsync(new DisconnectPacket());
        Assert.Null(await client.ReceiveAsync());
        await client.Run.WaitAsync(Patience);
        Assert.Equal(DisconnectKind.Clean, await _hooks.DisconnectedAsync("dev1nightlight_client"));
    }

    [Fact]
    public async Task Mqtt_3_1_client_is_served()
    {
        var client = await ConnectAsync(MqttVersion.V310, "old-client");
        await SubscribeAsync(client, "a/b", 1);
    }

    [Fact]
    public async Task Unsupported_protocol_level_gets_return_code_1_and_is_closed()
    {
        var client = Open();
        await client.SendRawAsync(Packet(0x10, Str("MQTT"), B(6, 2), U16(60), Str("c")));
        Assert.Equal("20020001", Convert.ToHexString(await client.ReceiveRawAsync(4)));
        Assert.Null(await client.ReceiveAsync());
        Assert.Contains(_hooks.Violations, v => v.ReasonCode == ReasonCode.UnsupportedProtocolVersion);
    }

    [Fact]
    public async Task First_packet_other_than_connect_closes_the_connection()
    {
        var client = Open();
        await client.SendAsync(PingReqPacket.Instance);
        Assert.Null(await client.ReceiveAsync());
        Assert.Contains(_hooks.Violations, v => v.ReasonCode == ReasonCode.ProtocolError && v.ClientId is null);
    }

    [Fact]
    public async Task Connection_that_never_sends_connect_is_closed_after_the_connect_timeout()
    {
        _options.ConnectTimeout = TimeSpan.FromMilliseconds(300);
        var client = Open();
        Assert.Null(await client.ReceiveAsync());
        await client.Run.WaitAsync(Patience);
        Assert.Contains(_hooks.Violations, v => v.Message.Contains("no CONNECT"));
    }

    // ---- keep-alive, wills, closing ----

    [Theory]
    [MemberData(nameof(Versions))]
    public async Task Keep_alive_expiry_closes_the_connection_and_publishes_the_will(MqttVersion version)
    {
        var watcher = await ConnectAsync(version, "watcher");
        await SubscribeAsync(watcher, "dev1/presence");
        var device = await ConnectAsync(version, "dev1", c =>
        {
            c.KeepAlive = 1;
            c.Will = new WillMessage { Topic = "dev1/presence", Payload = "offline"u8.ToArray() };
        });
        var started = DateTime.UtcNow;

        var will = Assert.IsType<PublishPacket>(await watcher.ReceiveAsync());
        Assert.Equal("offline", Encoding.UTF8.GetString(will.Payload.Span));
        Assert.InRange(DateTime.UtcNow - started, TimeSpan.FromSeconds(1.3), TimeSpan.FromSeconds(4));
        if (version == MqttVersion.V500)
        {
            Assert.Equal(ReasonCode.KeepAliveTimeout, Assert.IsType<DisconnectPacket>(await device.ReceiveAsync()).ReasonCode);
        }
        Assert.Null(await device.ReceiveAsync());
        Assert.Equal(DisconnectKind.KeepAliveTimeout, await _hooks.DisconnectedAsync("dev1"));
    }

    [Fact]
    public async Task Pings_keep_a_connection_alive_past_its_keep_alive()
    {
        var device = await ConnectAsync(MqttVersion.V311, "dev1", c => c.KeepAlive = 1);
        for (var i = 0; i < 4; i++)
        {
            await Task.Delay(600);
            await device.SendAsync(PingReqPacket.Instance);
            Assert.IsType<PingRespPacket>(await device.ReceiveAsync());
        }
    }

    [Fact]
    public async Task Server_keep_alive_from_connack_is_the_one_enforced()
    {
        _options.ServerKeepAlive = 1;
        var device = await ConnectAsync(MqttVersion.V500, "dev1", c => c.KeepAlive = 600);
        Assert.Equal((ushort)1, device.ConnAck!.ServerKeepAlive);
        Assert.Equal(ReasonCode.KeepAliveTimeout, Assert.IsType<DisconnectPacket>(await device.ReceiveAsync()).ReasonCode);
    }

    [Theory]
    [MemberData(nameof(Versions))]
    public async Task Malformed_packet_closes_with_its_reason_and_publishes_the_will(MqttVersion version)
    {
        var watcher = await ConnectAsync(version, "watcher");
        await SubscribeAsync(watcher, "dev1/presence");
        var device = await ConnectAsync(version, "dev1", c => c.Will = new WillMessage { Topic = "dev1/presence", Payload = "gone"u8.ToArray() });

        await device.SendRawAsync(Packet(0x36, Str("a"), U16(1)));   // PUBLISH with QoS 3

        if (version == MqttVersion.V500)
        {
            Assert.Equal(ReasonCode.MalformedPacket, Assert.IsType<DisconnectPacket>(await device.ReceiveAsync()).ReasonCode);
        }
        Assert.Null(await device.ReceiveAsync());
        Assert.Equal("gone", Encoding.UTF8.GetString(Assert.IsType<PublishPacket>(await watcher.ReceiveAsync()).Payload.Span));
        Assert.Contains(_hooks.Violations, v => v.ReasonCode == ReasonCode.MalformedPacket && v.ClientId == "dev1");
        Assert.Equal(DisconnectKind.ProtocolError, await _hooks.DisconnectedAsync("dev1"));
    }

    [Fact]
    public async Task Disconnect_reason_quoting_a_long_topic_is_cut_short()
    {
        var device = await ConnectAsync(MqttVersion.V500, "dev1");
        await device.SendRawAsync(Packet(0x30, Str(new string('a', 250) + "/+"), B(0)));
        var disconnect = Assert.IsType<DisconnectPacket>(await device.ReceiveAsync());
        Assert.Equal(ReasonCode.ProtocolError, disconnect.ReasonCode);
        Assert.InRange(disconnect.ReasonString!.Length, 1, 200);
    }

    [Fact]
    public async Task Disconnect_reason_is_left_out_for_a_client_with_a_small_maximum_packet_size()
    {
        var device = await ConnectAsync(MqttVersion.V500, "dev1", c => c.MaximumPacketSize = 64);
        await device.SendRawAsync(Packet(0x30, Str("a/+"), B(0)));
        var disconnect = Assert.IsType<DisconnectPacket>(await device.ReceiveAsync());
        Assert.Equal(ReasonCode.ProtocolError, disconnect.ReasonCode);
        Assert.Null(disconnect.ReasonString);
    }

    [Fact]
    public async Task Second_connection_with_the_same_client_id_takes_the_session_over()
    {
        var first = await ConnectAsync(MqttVersion.V500, "dev1");
        var second = await ConnectAsync(MqttVersion.V500, "dev1");
        Assert.Equal(ReasonCode.SessionTakenOver, Assert.IsType<DisconnectPacket>(await first.ReceiveAsync()).ReasonCode);
        Assert.Null(await first.ReceiveAsync());
        await second.SendAsync(PingReqPacket.Instance);
        Assert.IsType<PingRespPacket>(await second.ReceiveAsync());
    }

    [Fact]
    public async Task Client_that_hangs_up_without_disconnect_is_a_lost_connection()
    {
        var device = await ConnectAsync(MqttVersion.V311, "dev1");
        await device.HangUpAsync();
        await device.Run.WaitAsync(Patience);
        Assert.Equal(DisconnectKind.ConnectionLost, await _hooks.DisconnectedAsync("dev1"));
    }

    // ---- topic aliases ----

    [Fact]
    public async Task Inbound_topic_alias_is_learned_and_resolved()
    {
        var watcher = await ConnectAsync(MqttVersion.V311, "watcher");
        await SubscribeAsync(watcher, "dev1/telemetry");
        var device = await ConnectAsync(MqttVersion.V500, "dev1");
        await device.SendAsync(new PublishPacket { Topic = "dev1/telemetry", TopicAlias = 1, Payload = "1"u8.ToArray() });
        await device.SendAsync(new PublishPacket { Topic = "", TopicAlias = 1, Payload = "2"u8.ToArray() });
        foreach (var expected in new[] { "1", "2" })
        {
            var publish = Assert.IsType<PublishPacket>(await watcher.ReceiveAsync());
            Assert.Equal("dev1/telemetry", publish.Topic);
            Assert.Equal(expected, Encoding.UTF8.GetString(publish.Payload.Span));
        }
    }

    [Fact]
    public async Task Inbound_topic_alias_above_the_maximum_is_refused()
    {
        _options.TopicAliasMaximum = 2;
        var device = await ConnectAsync(MqttVersion.V500, "dev1");
        await device.SendAsync(new PublishPacket { Topic = "a", TopicAlias = 3 });
        Assert.Equal(ReasonCode.TopicAliasInvalid, Assert.IsType<DisconnectPacket>(await device.ReceiveAsync()).ReasonCode);
        Assert.Null(await device.ReceiveAsync());
    }

    [Fact]
    public async Task Inbound_topic_alias_never_given_a_topic_is_a_protocol_error()
    {
        var device = await ConnectAsync(MqttVersion.V500, "dev1");
        await device.SendAsync(new PublishPacket { Topic = "", TopicAlias = 1 });
        Assert.Equal(ReasonCode.ProtocolError, Assert.IsType<DisconnectPacket>(await device.ReceiveAsync()).ReasonCode);
    }

    [Fact]
    public async Task Outbound_topic_aliases_replace_repeated_topics_and_pass_to_new_topics_least_recently_used_first()
    {
        var server = await ConnectAsync(MqttVersion.V500, "server", c => c.TopicAliasMaximum = 1);
        await SubscribeAsync(server, "+/telemetry");
        var device = await ConnectAsync(MqttVersion.V311, "dev1");
        foreach (var topic in new[] { "dev1/telemetry", "dev1/telemetry", "dev2/telemetry", "dev1/telemetry" })
        {
            await device.SendAsync(new PublishPacket { Topic = topic, Payload = "{}"u8.ToArray() });
        }
        var received = new List<PublishPacket>();
        for (var i = 0; i < 4; i++)
        {
            received.Add(Assert.IsType<PublishPacket>(await server.ReceiveAsync()));
        }
        // One alias: dev2 takes it over (sent with its topic), then dev1 takes it back.
        Assert.Equal(["dev1/telemetry", "", "dev2/telemetry", "dev1/telemetry"], received.Select(p => p.Topic));
        Assert.Equal([1, 1, 1, 1], received.Select(p => (int)p.TopicAlias));
    }

    [Fact]
    public async Task Mqtt_3_1_1_subscriber_never_gets_aliases()
    {
        var watcher = await ConnectAsync(MqttVersion.V311, "watcher");
        await SubscribeAsync(watcher, "t");
        var device = await ConnectAsync(MqttVersion.V500, "dev1");
        await device.SendAsync(new PublishPacket { Topic = "t", Payload = "x"u8.ToArray() });
        await device.SendAsync(new PublishPacket { Topic = "t", Payload = "y"u8.ToArray() });
        Assert.Equal("t", Assert.IsType<PublishPacket>(await watcher.ReceiveAsync()).Topic);
        Assert.Equal("t", Assert.IsType<PublishPacket>(await watcher.ReceiveAsync()).Topic);
    }

    // ---- maximum packet size ----

    [Theory]
    [MemberData(nameof(Versions))]
    public async Task Packet_larger_than_the_brokers_maximum_closes_the_connection(MqttVersion version)
    {
        _options.MaxPacketSize = 1000;
        var device = await ConnectAsync(version, "dev1");
        await device.SendRawAsync(Hex("30 E907"));  // announces 1,001 bytes of body; the body never comes
        if (version == MqttVersion.V500)
        {
            Assert.Equal(ReasonCode.PacketTooLarge, Assert.IsType<DisconnectPacket>(await device.ReceiveAsync()).ReasonCode);
        }
        Assert.Null(await device.ReceiveAsync());
        Assert.Contains(_hooks.Violations, v => v.ReasonCode == ReasonCode.PacketTooLarge);
    }

    [Fact]
    public async Task Publish_larger_than_the_receivers_maximum_is_not_sent_to_it()
    {
        var receiver = await ConnectAsync(MqttVersion.V500, "small", c => c.MaximumPacketSize = 64);
        await SubscribeAsync(receiver, "t");
        var device = await ConnectAsync(MqttVersion.V311, "dev1");
        await device.SendAsync(new PublishPacket { Topic = "t", Payload = new byte[100] });
        await device.SendAsync(new PublishPacket { Topic = "t", Payload = "small"u8.ToArray() });
        Assert.Equal("small", Encoding.UTF8.GetString(Assert.IsType<PublishPacket>(await receiver.ReceiveAsync()).Payload.Span));
        Assert.Contains(_hooks.Drops, d => d.ClientId == "small" && d.Reason == DropReason.TooLarge);
    }

    // ---- the write side on its own: a registry that hands the sink to the test ----

    [Fact]
    public async Task Sends_from_many_threads_arrive_whole_and_in_order_through_a_slow_reader()
    {
        _options.MaxPendingBytesPerConnection = 4096;
        var registry = new SinkRegistry();
        var toServer = new Pipe();
        var toClient = new Pipe(new PipeOptions(pauseWriterThreshold: 1024, resumeWriterThreshold: 512));
        var run = MqttConnection.RunAsync(new DuplexPipe(toServer.Reader, toClient.Writer), new ClientEndpoint("memory", "test", true), registry,
            _options, _hooks, _log, TimeProvider.System, _stop.Token);
        var client = new TestClient(toServer.Writer, toClient.Reader, run);
        await client.SendAsync(new ConnectPacket { Version = MqttVersion.V311, ClientId = "slow", CleanStart = true });
        Assert.IsType<ConnAckPacket>(await client.ReceiveAsync());
        var sink = await registry.Sink.Task.WaitAsync(Patience);

        const int Threads = 4;
        const int PerThread = 500;
        var messages = Enumerable.Range(0, Threads).Select(t => Enumerable.Range(0, PerThread)
            .Select(i => new ApplicationMessage { Topic = $"t/{t}", Payload = Encoding.UTF8.GetBytes($"{t}:{i}") }).ToArray()).ToArray();
        await Task.WhenAll(Enumerable.Range(0, Threads).Select(t => Task.Run(() =>
        {
            foreach (var message in messages[t])
            {
                Assert.True(sink.SendPublish(message, 0, 0, false, false, []));
            }
        })));
        Assert.True(sink.PendingBytes > _options.MaxPendingBytesPerConnection, $"{sink.PendingBytes} bytes pending while nobody reads");

        var next = new int[Threads];
        for (var n = 0; n < Threads * PerThread; n++)
        {
            var publish = Assert.IsType<PublishPacket>(await client.ReceiveAsync());
            var parts = Encoding.UTF8.GetString(publish.Payload.Span).Split(':');
            var thread = int.Parse(parts[0]);
            Assert.Equal($"t/{thread}", publish.Topic);
            Assert.Equal(next[thread]++, int.Parse(parts[1]));
        }
        await registry.Handler.Drained.Task.WaitAsync(Patience);
        Assert.Equal(0, sink.PendingBytes);
    }

    [Fact]
    public async Task Closing_from_the_engine_ends_the_connection_once_with_its_kind()
    {
        var registry = new SinkRegistry();
        var client = OpenWith(registry);
        await client.SendAsync(new ConnectPacket { Version = MqttVersion.V500, ClientId = "c", CleanStart = true });
        client.Version = MqttVersion.V500;
        Assert.IsType<ConnAckPacket>(await client.ReceiveAsync());
        var sink = await registry.Sink.Task.WaitAsync(Patience);
        sink.Close(ReasonCode.SessionTakenOver);
        sink.Close(ReasonCode.AdministrativeAction);
        await client.HangUpAsync();
        Assert.Equal(ReasonCode.SessionTakenOver, Assert.IsType<DisconnectPacket>(await client.ReceiveAsync()).ReasonCode);
        Assert.Null(await client.ReceiveAsync());
        await client.Run.WaitAsync(Patience);
        Assert.Equal([DisconnectKind.TakenOver], registry.Handler.Closed);
        Assert.True(sink.SendPublish(new ApplicationMessage { Topic = "late" }, 0, 0, false, false, []), "a send after close is not an error");
    }

    [Fact]
    public async Task Subscription_identifier_from_a_client_publish_is_a_protocol_error()
    {
        var registry = new SinkRegistry();
        var client = OpenWith(registry);
        client.Version = MqttVersion.V500;
        await client.SendAsync(new ConnectPacket { Version = MqttVersion.V500, ClientId = "c", CleanStart = true });
        Assert.IsType<ConnAckPacket>(await client.ReceiveAsync());
        await client.SendAsync(new PublishPacket { Topic = "t", SubscriptionIdentifiers = [1] });
        Assert.Equal(ReasonCode.ProtocolError, Assert.IsType<DisconnectPacket>(await client.ReceiveAsync()).ReasonCode);
        await client.Run.WaitAsync(Patience);
        Assert.Equal([DisconnectKind.ProtocolError], registry.Handler.Closed);
        Assert.Empty(registry.Handler.Published);
    }

    TestClient OpenWith(ISessionRegistry registry)
    {
        var toServer = new Pipe();
        var toClient = new Pipe();
        var run = MqttConnection.RunAsync(new DuplexPipe(toServer.Reader, toClient.Writer), new ClientEndpoint("memory", "test", true), registry,
            _options, _hooks, _log, TimeProvider.System, _stop.Token);
        return new TestClient(toServer.Writer, toClient.Reader, run);
    }

    /// <summary>Accepts every CONNECT and hands the test the connection's sink and a handler that records what it is told.</summary>
    sealed class SinkRegistry : ISessionRegistry
    {
        public TaskCompletionSource<IClientSink> Sink { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public RecordingHandler Handler { get; private set; } = null!;

        public ValueTask<ISessionHandler?> ConnectAsync(ConnectPacket connect, ClientEndpoint endpoint, IClientSink sink, CancellationToken cancellationToken)
        {
            sink.Send(new ConnAckPacket { TopicAliasMaximum = 10 });
            Handler = new RecordingHandler(new ClientContext(connect.ClientId, null, endpoint, connect.Version, ClientLimits.Unlimited));
            Sink.SetResult(sink);
            return ValueTask.FromResult<ISessionHandler?>(Handler);
        }
    }

    sealed class RecordingHandler(ClientContext client) : ISessionHandler
    {
        public ClientContext Client { get; } = client;

        public ConcurrentQueue<PublishPacket> Published { get; } = new();

        public ConcurrentQueue<DisconnectKind> Closed { get; } = new();

        public TaskCompletionSource Drained { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public void OnPublish(PublishPacket packet) => Published.Enqueue(packet);

        public void OnPublishAck(PublishAckPacket packet)
        {
        }

        public void OnSubscribe(SubscribePacket packet)
        {
        }

        public void OnUnsubscribe(UnsubscribePacket packet)
        {
        }

        public void OnDisconnect(DisconnectPacket packet)
        {
        }

        public ValueTask OnConnectionClosedAsync(DisconnectKind kind)
        {
            Closed.Enqueue(kind);
            return ValueTask.CompletedTask;
        }

        public void OnSendQueueDrained() => Drained.TrySetResult();
    }

    // ---- the client on the other end of the pipes ----

    sealed class DuplexPipe(PipeReader input, PipeWriter output) : IDuplexPipe
    {
        public PipeReader Input { get; } = input;

        public PipeWriter Output { get; } = output;
    }

    sealed class TestClient(PipeWriter toServer, PipeReader fromServer, Task run)
    {
        readonly MqttPacketReader _reader = new();

        public MqttVersion Version { get; set; } = MqttVersion.V311;

        public ConnAckPacket? ConnAck { get; set; }

        public Task Run { get; } = run;

        public async Task SendAsync(MqttPacket packet)
        {
            MqttPacketWriter.Write(toServer, Version, packet);
            await toServer.FlushAsync();
        }

        public async Task SendRawAsync(byte[] bytes)
        {
            await toServer.WriteAsync(bytes);
        }

        public async Task HangUpAsync() => await toServer.CompleteAsync();

        /// <summary>The next packet from the broker, or null when it closed the connection.</summary>
        public async Task<MqttPacket?> ReceiveAsync()
        {
            using var timeout = new CancellationTokenSource(Patience);
            while (true)
            {
                var result = await fromServer.ReadAsync(timeout.Token);
                var buffer = result.Buffer;
                var status = _reader.TryRead(ref buffer, Version, int.MaxValue, out var packet, out var error);
                if (status == ReadStatus.Packet)
                {
                    // Only what was read is examined: the next packet may already be in the buffer.
                    fromServer.AdvanceTo(buffer.Start);
                    return packet;
                }
                fromServer.AdvanceTo(buffer.Start, buffer.End);
                Assert.True(status == ReadStatus.Incomplete, $"the broker sent a malformed packet: {error.Message}");
                if (result.IsCompleted)
                {
                    Assert.True(buffer.IsEmpty, "the broker closed in the middle of a packet");
                    return null;
                }
            }
        }

        public async Task<byte[]> ReceiveRawAsync(int count)
        {
            using var timeout = new CancellationTokenSource(Patience);
            while (true)
            {
                var result = await fromServer.ReadAsync(timeout.Token);
                if (result.Buffer.Length >= count || result.IsCompleted)
                {
                    var bytes = result.Buffer.Slice(0, Math.Min(count, result.Buffer.Length)).ToArray();
                    fromServer.AdvanceTo(result.Buffer.GetPosition(bytes.Length));
                    return bytes;
                }
                fromServer.AdvanceTo(result.Buffer.Start, result.Buffer.End);
            }
        }
    }

    /// <summary>Fails the test on any error the broker logs: an exception inside the core is a bug, whatever the client sent.</summary>
    sealed class ErrorLog : ILogger
    {
        public ConcurrentQueue<string> Errors { get; } = new();

        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Warning;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (logLevel >= LogLevel.Error)
            {
                Errors.Enqueue($"{formatter(state, exception)}: {exception}");
            }
        }
    }

    sealed class RecordingHooks : IBrokerHooks
    {
        readonly ConcurrentDictionary<string, TaskCompletionSource<DisconnectKind>> _disconnected = new();

        public ConcurrentQueue<(string? ClientId, byte ReasonCode, string Message)> Violations { get; } = new();

        public ConcurrentQueue<(string ClientId, DropReason Reason)> Drops { get; } = new();

        public Task<DisconnectKind> DisconnectedAsync(string clientId) => Disconnected(clientId).Task.WaitAsync(Patience);

        TaskCompletionSource<DisconnectKind> Disconnected(string clientId) =>
            _disconnected.GetOrAdd(clientId, _ => new TaskCompletionSource<DisconnectKind>(TaskCreationOptions.RunContinuationsAsynchronously));

        public ValueTask<ConnectDecision> AuthenticateAsync(ConnectPacket connect, ClientEndpoint endpoint, CancellationToken cancellationToken) =>
            ValueTask.FromResult(ConnectDecision.Accept(null, ClientLimits.Unlimited));

        public bool MaySubscribe(ClientContext client, string filter) => true;

        public bool MayPublish(ClientContext client, string topic) => true;

        public void OnConnected(ClientContext client, bool sessionPresent)
        {
        }

        public void OnDisconnected(ClientContext client, DisconnectKind kind) => Disconnected(client.ClientId).TrySetResult(kind);

        public void OnMessageDropped(string clientId, ApplicationMessage message, DropReason reason) => Drops.Enqueue((clientId, reason));

        public void OnProtocolViolation(ClientEndpoint endpoint, string? clientId, byte reasonCode, string message) =>
            Violations.Enqueue((clientId, reasonCode, message));

        public void OnMessagePublished(ClientContext client, ApplicationMessage message)
        {
        }
    }
}
