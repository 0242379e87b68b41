using System.Buffers;
using System.IO.Pipelines;
using Microsoft.Extensions.Logging;
using Nightlight.Broker.Core.Packets;

namespace Nightlight.Broker.Core.Connection;

/// <summary>
/// One client's connection: reads packets off the transport and hands them to its session in order, writes what the
/// engine sends from any thread without blocking it, and keeps what is per connection: keep-alive, the CONNECT timeout,
/// topic aliases both ways, the packet-size limits both ways. Completes the transport when it ends; does not own it otherwise.
/// </summary>
public sealed partial class MqttConnection : IClientSink
{
    readonly IDuplexPipe _transport;
    readonly ClientEndpoint _endpoint;
    readonly ISessionRegistry _registry;
    readonly BrokerCoreOptions _options;
    readonly IBrokerHooks _hooks;
    readonly ILogger _logger;
    readonly TimeProvider _time;
    readonly MqttPacketReader _reader;

    // Read side: touched only by the read loop (and the timer, which only reads them).
    ISessionHandler? _handler;
    volatile bool _connectReceived;
    string? _clientId;
    long _lastPacketAt;
    long _keepAliveTimeout;
    ITimer? _timer;
    ITimer? _packetTimer;
    bool _unfinished;
    string?[]? _inboundAliases;

    // Write side and closing: under _gate.
    readonly Lock _gate = new();
    MqttVersion _version = MqttVersion.V311;
    bool _connAckSent;
    bool _closing;
    bool _outputCompleted;
    DisconnectKind _closeKind = DisconnectKind.ConnectionLost;
    bool _requestProblemInformation = true;
    uint _clientMaximumPacketSize;
    ushort _clientTopicAliasMaximum;
    ushort _inboundAliasMaximum;
    // Outbound topic aliases (5), most recently used first: once all the client allows are taken, the least recently
    // used one passes to the next new topic.
    Dictionary<string, LinkedListNode<(string Topic, ushort Alias)>>? _outboundAliases;
    LinkedList<(string Topic, ushort Alias)>? _aliasRecency;
    long _unflushedBytes;
    long _overflowBytes;
    Pipe? _overflow;
    Task? _flushing;
    bool _congested;

    MqttConnection(IDuplexPipe transport, ClientEndpoint endpoint, ISessionRegistry registry, BrokerCoreOptions options, IBrokerHooks hooks,
        ILogger logger, TimeProvider time)
    {
        _transport = transport;
        _endpoint = endpoint;
        _registry = registry;
        _options = options;
        _hooks = hooks;
        _logger = logger;
        _time = time;
        _reader = new MqttPacketReader(options.MaxTopicLength);
    }

    /// <summary>Serves one client on <paramref name="transport"/> until the connection ends; completes the transport's reader and writer.</summary>
    public static Task RunAsync(IDuplexPipe transport, ClientEndpoint endpoint, ISessionRegistry registry, BrokerCoreOptions options,
        IBrokerHooks hooks, ILogger logger, TimeProvider time, CancellationToken cancellationToken) =>
        new MqttConnection(transport, endpoint, registry, options, hooks, logger, time).RunAsync(cancellationToken);

    public MqttVersion Version => _version;

    /// <summary>Bytes written and not yet taken by the transport: the flush in progress plus what waits behind it.</summary>
    public long PendingBytes
    {
        get
        {
            lock (_gate)
            {
                return _flushing is null ? 0 : _unflushedBytes + _overflowBytes;
            }
        }
    }

    // ---- the read loop ----

    async Task RunAsync(CancellationToken cancellationToken)
    {
        var input = _transport.Input;
        using var stopping = cancellationToken.Register(static state => ((MqttConnection)state!).End(ReasonCode.ServerShuttingDown, null, DisconnectKind.Administrative), this);
        _lastPacketAt = _time.GetTimestamp();
        _timer = _time.CreateTimer(static state => ((MqttConnection)state!).OnTimer(), this, _options.ConnectTimeout, Timeout.InfiniteTimeSpan);
        try
        {
            var reading = true;
            while (reading)
            {
                ReadResult result;
                try
                {
                    result = await input.ReadAsync(CancellationToken.None).ConfigureAwait(false);
                }
                catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException or OperationCanceledException)
                {
                    // The transport failed or was aborted: the connection is lost.
                    break;
                }
                var buffer = result.Buffer;
                var refused = false;
                try
                {
                    while (!IsClosing)
                    {
                        var status = _reader.TryRead(ref buffer, _handler is null ? MqttVersion.V311 : _version, _options.MaxPacketSize,
                            out var packet, out var error);
                        if (status == ReadStatus.Incomplete)
                        {
                            break;
                        }
                        if (status == ReadStatus.Malformed)
                        {
                            Refuse(error);
                            refused = true;
                            break;
                        }
                        _lastPacketAt = _time.GetTimestamp();
                        if (_handler is null)
                        {
                            await ConnectAsync(packet!, cancellationToken).ConfigureAwait(false);
                            continue;
                        }
                        Dispatch(packet!);
                        if (packet is PublishPacket && _handler.ReadDelay is { Ticks: > 0 } delay && !IsClosing)
                        {
                            await Task.Delay(delay, _time, CancellationToken.None).ConfigureAwait(false);
                        }
                    }
                    // The transport may already be closing when the client's end of input arrives with half a packet:
                    // that hang-up is still reported.
                    TrackUnfinishedPacket(!buffer.IsEmpty && !refused && (!IsClosing || result.IsCompleted), result.IsCompleted);
                }
                finally
                {
                    input.AdvanceTo(buffer.Start, buffer.End);
                }
                reading = !IsClosing && !result.IsCompleted && !result.IsCanceled;
            }
        }
        catch (Exception e)
        {
            LogFailure(_logger, e, _endpoint.RemoteAddress, _clientId);
            End(ReasonCode.UnspecifiedError, null, DisconnectKind.Administrative);
        }
        finally
        {
            await EndAsync().ConfigureAwait(false);
        }
    }

    bool IsClosing => Volatile.Read(ref _closing);

    /// <summary>The first packet: must be CONNECT; the engine answers it (CONNACK goes out through <see cref="Send"/>).</summary>
    async ValueTask ConnectAsync(MqttPacket packet, CancellationToken cancellationToken)
    {
        if (packet is not ConnectPacket connect)
        {
            Violation(ReasonCode.ProtocolError, $"first packet is {packet.Type}, not CONNECT");
            return;
        }
        _connectReceived = true;
        _timer?.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
        lock (_gate)
        {
            _version = connect.Version;
            _clientMaximumPacketSize = connect.MaximumPacketSize;
            _clientTopicAliasMaximum = connect.Version == MqttVersion.V500 ? connect.TopicAliasMaximum : (ushort)0;
            _requestProblemInformation = connect.RequestProblemInformation;
        }
        _clientId = connect.ClientId;
        _keepAliveTimeout = KeepAliveTimeout(connect.KeepAlive);
        var handler = await _registry.ConnectAsync(connect, _endpoint, this, cancellationToken).ConfigureAwait(false);
        if (handler is null)
        {
            // Refused: the CONNACK saying why is already written; close without DISCONNECT.
            lock (_gate)
            {
                _closing = true;
                _connAckSent = false;
            }
            return;
        }
        _clientId = handler.Client.ClientId;
        _handler = handler;
        _lastPacketAt = _time.GetTimestamp();
        ArmTimer();
    }

    void Dispatch(MqttPacket packet)
    {
        var handler = _handler!;
        switch (packet)
        {
            case PublishPacket publish:
                if (ResolveTopicAlias(publish))
                {
                    handler.OnPublish(publish);
                }
                break;
            case PublishAckPacket ack:
                handler.OnPublishAck(ack);
                break;
            case SubscribePacket subscribe:
                if (subscribe.SubscriptionIdentifier is not null && _version != MqttVersion.V500)
                {
                    Violation(ReasonCode.ProtocolError, "subscription identifier outside MQTT 5");
                    break;
                }
                handler.OnSubscribe(subscribe);
                break;
            case UnsubscribePacket unsubscribe:
                handler.OnUnsubscribe(unsubscribe);
                break;
            case PingReqPacket:
                Send(PingRespPacket.Instance);
                break;
            case DisconnectPacket disconnect:
                handler.OnDisconnect(disconnect);
                End(ReasonCode.NormalDisconnection, null, DisconnectKind.Clean, sendDisconnect: false);
                break;
            case ConnectPacket:
                Violation(ReasonCode.ProtocolError, "a second CONNECT");
                break;
            case AuthPacket:
                Violation(ReasonCode.ProtocolError, "AUTH without an authentication method in CONNECT");
                break;
            default:
                Violation(ReasonCode.ProtocolError, $"{packet.Type} is sent by servers, not clients");
                break;
        }
    }

    /// <summary>MQTT 5 inbound topic aliases: learns alias → topic, fills in the topic of a PUBLISH that sent only its alias.</summary>
    bool ResolveTopicAlias(PublishPacket publish)
    {
        if (publish.SubscriptionIdentifiers is not null)
        {
            Violation(ReasonCode.ProtocolError, "PUBLISH from a client with a subscription identifier");
            return false;
        }
        var alias = publish.TopicAlias;
        if (alias == 0)
        {
            return true;
        }
        if (alias > _inboundAliasMaximum)
        {
            Violation(ReasonCode.TopicAliasInvalid, $"topic alias {alias} above the maximum of {_inboundAliasMaximum}");
            return false;
        }
        if (publish.Topic.Length > 0)
        {
            (_inboundAliases ??= new string?[_inboundAliasMaximum + 1])[alias] = publish.Topic;
        }
        else if (_inboundAliases?[alias] is { } topic)
        {
            publish.Topic = topic;
        }
        else
        {
            Violation(ReasonCode.ProtocolError, $"topic alias {alias} was never given a topic");
            return false;
        }
        publish.TopicAlias = 0;
        return true;
    }

    void Refuse(PacketError error)
    {
        if (error.ReasonCode == ReasonCode.UnsupportedProtocolVersion && _handler is null)
        {
            // The client's level is not one we speak, so answer in the oldest form every client reads: 3.1.1's return code 1.
            _hooks.OnProtocolViolation(_endpoint, null, error.ReasonCode, error.Message);
            lock (_gate)
            {
                WriteLocked(static (output, _, _) => MqttPacketWriter.Write(output, MqttVersion.V311,
                    new ConnAckPacket { ReasonCode = ReasonCode.UnsupportedProtocolVersion }), null);
            }
            End(error.ReasonCode, null, DisconnectKind.ProtocolError, sendDisconnect: false);
            return;
        }
        if (_handler is null && !_connectReceived && _reader.ConnectVersion == MqttVersion.V500)
        {
            // The CONNECT named MQTT 5 before it broke, so the client reads a 5 CONNACK: refuse with the reason, then close.
            _hooks.OnProtocolViolation(_endpoint, null, error.ReasonCode, error.Message);
            lock (_gate)
            {
                WriteLocked(static (output, _, state) => MqttPacketWriter.Write(output, MqttVersion.V500,
                    new ConnAckPacket { ReasonCode = (byte)state! }), ConnAckRefusal(error.ReasonCode));
            }
            End(error.ReasonCode, null, DisconnectKind.ProtocolError, sendDisconnect: false);
            return;
        }
        Violation(error.ReasonCode, error.Message);
    }

    /// <summary>The reader's reason as a CONNACK may carry it; a reason CONNACK has no code for is a malformed packet.</summary>
    static byte ConnAckRefusal(byte reasonCode) => reasonCode is ReasonCode.MalformedPacket or ReasonCode.ProtocolError
        or ReasonCode.TopicNameInvalid or ReasonCode.PacketTooLarge or ReasonCode.PayloadFormatInvalid or ReasonCode.QoSNotSupported
        ? reasonCode
        : ReasonCode.MalformedPacket;

    void Violation(byte reasonCode, string message)
    {
        _hooks.OnProtocolViolation(_endpoint, _clientId, reasonCode, message);
        End(reasonCode, message, DisconnectKind.ProtocolError);
    }

    // ---- unfinished packets ----

    /// <summary>
    /// A packet begun and not finished within <see cref="BrokerCoreOptions.PacketTimeout"/> closes the connection (a
    /// slow sender holding a buffer); a client that hangs up inside a packet is logged, its whole packets stand.
    /// </summary>
    void TrackUnfinishedPacket(bool unfinished, bool inputEnded)
    {
        if (unfinished && inputEnded)
        {
            _hooks.OnProtocolViolation(_endpoint, _clientId, ReasonCode.MalformedPacket, "the client closed the connection inside a packet");
            unfinished = false;
        }
        if (unfinished == _unfinished)
        {
            return;
        }
        _unfinished = unfinished;
        if (unfinished)
        {
            _packetTimer ??= _time.CreateTimer(static state => ((MqttConnection)state!).OnPacketTimeout(), this, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
            _packetTimer.Change(_options.PacketTimeout, Timeout.InfiniteTimeSpan);
        }
        else
        {
            _packetTimer?.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
        }
    }

    void OnPacketTimeout()
    {
        // Before CONNECT the CONNECT timeout speaks for itself.
        if (IsClosing || !_connectReceived)
        {
            return;
        }
        _hooks.OnProtocolViolation(_endpoint, _clientId, ReasonCode.KeepAliveTimeout,
            $"a packet was left unfinished within {_options.PacketTimeout.TotalSeconds:0.#} s");
        End(ReasonCode.KeepAliveTimeout, null, DisconnectKind.ProtocolError);
    }

    // ---- keep-alive and the CONNECT timeout ----

    long KeepAliveTimeout(ushort seconds) => seconds == 0 ? 0 : (long)(seconds * 1.5 * _time.TimestampFrequency);

    void ArmTimer()
    {
        if (_keepAliveTimeout == 0)
        {
            _timer?.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
            return;
        }
        _timer?.Change(TimeSpan.FromSeconds((double)_keepAliveTimeout / _time.TimestampFrequency), Timeout.InfiniteTimeSpan);
    }

    void OnTimer()
    {
        if (!_connectReceived)
        {
            if (!IsClosing)
            {
                _hooks.OnProtocolViolation(_endpoint, null, ReasonCode.MaximumConnectTime, $"no CONNECT within {_options.ConnectTimeout.TotalSeconds:0.#} s");
                End(ReasonCode.MaximumConnectTime, null, DisconnectKind.ProtocolError, sendDisconnect: false);
            }
            return;
        }
        var timeout = _keepAliveTimeout;
        if (_handler is null)
        {
            return;
        }
        if (timeout == 0)
        {
            return;
        }
        var idle = _time.GetTimestamp() - Volatile.Read(ref _lastPacketAt);
        if (idle >= timeout)
        {
            End(ReasonCode.KeepAliveTimeout, null, DisconnectKind.KeepAliveTimeout);
            return;
        }
        _timer?.Change(TimeSpan.FromSeconds((double)(timeout - idle) / _time.TimestampFrequency), Timeout.InfiniteTimeSpan);
    }

    // ---- the write side: any thread, never blocking ----

    public void Send(MqttPacket packet)
    {
        lock (_gate)
        {
            if (_outputCompleted)
            {
                return;
            }
            if (packet is ConnAckPacket connack)
            {
                OnConnAck(connack);
            }
            else if (!_requestProblemInformation && packet is PublishAckPacket or SubAckPacket or UnsubAckPacket)
            {
                StripProblemInformation(packet);
            }
            WriteLocked(static (output, version, state) => MqttPacketWriter.Write(output, version, (MqttPacket)state!), packet);
        }
    }

    /// <summary>The CONNACK fixes this connection's limits: the keep-alive the server told the client, the aliases it may use.</summary>
    void OnConnAck(ConnAckPacket connack)
    {
        if (connack.ReasonCode != ReasonCode.Success)
        {
            return;
        }
        _connAckSent = true;
        if (_version == MqttVersion.V500)
        {
            _inboundAliasMaximum = connack.TopicAliasMaximum ?? 0;
            if (connack.ServerKeepAlive is { } serverKeepAlive)
            {
                _keepAliveTimeout = KeepAliveTimeout(serverKeepAlive);
            }
        }
    }

    /// <summary>MQTT-3.1.2-29: a client that asked for no problem information gets no reason string or user properties on acknowledgements.</summary>
    static void StripProblemInformation(MqttPacket packet)
    {
        switch (packet)
        {
            case PublishAckPacket { ReasonString: not null } or PublishAckPacket { UserProperties: not null }:
                ((PublishAckPacket)packet).ReasonString = null;
                ((PublishAckPacket)packet).UserProperties = null;
                break;
            case SubAckPacket { ReasonString: not null } or SubAckPacket { UserProperties: not null }:
                ((SubAckPacket)packet).ReasonString = null;
                ((SubAckPacket)packet).UserProperties = null;
                break;
            case UnsubAckPacket { ReasonString: not null } or UnsubAckPacket { UserProperties: not null }:
                ((UnsubAckPacket)packet).ReasonString = null;
                ((UnsubAckPacket)packet).UserProperties = null;
                break;
        }
    }

    public bool SendPublish(ApplicationMessage message, ushort packetId, byte qos, bool retain, bool dup, ReadOnlySpan<uint> subscriptionIdentifiers)
    {
        lock (_gate)
        {
            if (_outputCompleted)
            {
                return true;
            }
            var v5 = _version == MqttVersion.V500;
            ushort alias = 0;
            var omitTopic = false;
            var newAlias = false;
            LinkedListNode<(string Topic, ushort Alias)>? known = null;
            if (v5 && _clientTopicAliasMaximum > 0)
            {
                _outboundAliases ??= new(StringComparer.Ordinal);
                _aliasRecency ??= new();
                if (_outboundAliases.TryGetValue(message.Topic, out known))
                {
                    alias = known.Value.Alias;
                    omitTopic = true;
                }
                else
                {
                    alias = _outboundAliases.Count < _clientTopicAliasMaximum ? (ushort)(_outboundAliases.Count + 1) : _aliasRecency.Last!.Value.Alias;
                    newAlias = true;
                }
            }
            uint? expiry = null;
            if (v5 && message.ExpiresAtUnixMs != 0)
            {
                var remainingMs = message.ExpiresAtUnixMs - _time.GetUtcNow().ToUnixTimeMilliseconds();
                expiry = (uint)Math.Clamp((remainingMs + 999) / 1000, 1, uint.MaxValue);
            }
            var target = WriteTarget;
            var written = MqttPacketWriter.WritePublish(target, _version, message, packetId, qos, retain, dup, subscriptionIdentifiers, alias, omitTopic,
                expiry, v5 ? _clientMaximumPacketSize : 0);
            if (written == 0)
            {
                return false;
            }
            if (newAlias)
            {
                RememberAlias(message.Topic, alias);
            }
            else if (known is not null && known != _aliasRecency!.First)
            {
                _aliasRecency.Remove(known);
                _aliasRecency.AddFirst(known);
            }
            Written(written);
            return true;
        }
    }

    /// <summary>The client now maps <paramref name="alias"/> to <paramref name="topic"/>; an alias taken back from its old topic reuses its node.</summary>
    void RememberAlias(string topic, ushort alias)
    {
        LinkedListNode<(string Topic, ushort Alias)> node;
        if (_outboundAliases!.Count < _clientTopicAliasMaximum)
        {
            node = new((topic, alias));
        }
        else
        {
            node = _aliasRecency!.Last!;
            _aliasRecency.RemoveLast();
            _outboundAliases.Remove(node.Value.Topic);
            node.Value = (topic, alias);
        }
        _outboundAliases[topic] = node;
        _aliasRecency!.AddFirst(node);
    }

    /// <summary>Where the next packet goes: the transport, or the overflow buffer while a flush is in progress.</summary>
    IBufferWriter<byte> WriteTarget => _flushing is null ? _transport.Output : (_overflow ??= NewOverflow()).Writer;

    static Pipe NewOverflow() => new(new PipeOptions(pauseWriterThreshold: 0, resumeWriterThreshold: 0, useSynchronizationContext: false));

    void WriteLocked(Func<IBufferWriter<byte>, MqttVersion, object?, int> write, object? state)
    {
        if (_outputCompleted)
        {
            return;
        }
        Written(write(WriteTarget, _version, state));
    }

    /// <summary>Counts what was just written and starts a flush unless one is running (it will take the overflow when it ends).</summary>
    void Written(int bytes)
    {
        if (_flushing is not null)
        {
            _overflowBytes += bytes;
        }
        else
        {
            _unflushedBytes += bytes;
            StartFlush();
        }
        if (_flushing is not null && _unflushedBytes + _overflowBytes > _options.MaxPendingBytesPerConnection)
        {
            _congested = true;
        }
    }

    void StartFlush()
    {
        ValueTask<FlushResult> flush;
        try
        {
            flush = _transport.Output.FlushAsync();
        }
        catch (Exception e) when (e is InvalidOperationException or IOException or ObjectDisposedException)
        {
            OutputFailed();
            return;
        }
        if (flush.IsCompletedSuccessfully)
        {
            _unflushedBytes = 0;
            if (flush.Result.IsCompleted || flush.Result.IsCanceled)
            {
                OutputFailed();
            }
            return;
        }
        var flushing = AwaitFlushAsync(flush);
        // A flush that ends between the check above and the await completes inline, under this lock: it has already
        // cleared _flushing and may have started the next flush. Keeping its finished task would park every later
        // packet in the overflow buffer for good.
        if (!flushing.IsCompleted)
        {
            _flushing = flushing;
        }
    }

    async Task AwaitFlushAsync(ValueTask<FlushResult> flush)
    {
        var ended = false;
        try
        {
            var result = await flush.ConfigureAwait(false);
            ended = result.IsCompleted || result.IsCanceled;
        }
        catch (Exception e) when (e is InvalidOperationException or IOException or ObjectDisposedException or OperationCanceledException)
        {
            ended = true;
        }
        var drained = false;
        lock (_gate)
        {
            _flushing = null;
            _unflushedBytes = 0;
            if (ended)
            {
                OutputFailed();
            }
            else if (_overflowBytes > 0 && !_outputCompleted)
            {
                MoveOverflow();
            }
            var pending = _flushing is null ? 0 : _unflushedBytes + _overflowBytes;
            if (_congested && pending <= _options.MaxPendingBytesPerConnection)
            {
                _congested = false;
                drained = !_closing;
            }
        }
        if (drained && _handler is { } handler)
        {
            handler.OnSendQueueDrained();
        }
    }

    /// <summary>Copies what was written during the flush into the transport and flushes it.</summary>
    void MoveOverflow()
    {
        var overflow = _overflow!;
        overflow.Writer.FlushAsync().GetAwaiter().GetResult();
        overflow.Reader.TryRead(out var read);
        var output = _transport.Output;
        foreach (var segment in read.Buffer)
        {
            output.Write(segment.Span);
        }
        overflow.Reader.AdvanceTo(read.Buffer.End);
        _unflushedBytes = _overflowBytes;
        _overflowBytes = 0;
        StartFlush();
    }

    /// <summary>The transport took no more (peer gone): stop reading.</summary>
    void OutputFailed()
    {
        _outputCompleted = true;
        _closing = true;
        WakeReader();
    }

    /// <summary>
    /// Ends a pending read so the read loop sees the close. From the pool: the caller may hold the engine's locks, and on
    /// a transport with an inline scheduler the read loop would otherwise run on the caller's thread.
    /// </summary>
    void WakeReader() => ThreadPool.UnsafeQueueUserWorkItem(static connection =>
    {
        try
        {
            connection._transport.Input.CancelPendingRead();
        }
        catch (Exception e) when (e is InvalidOperationException or ObjectDisposedException)
        {
            // The read loop already ended and completed the input.
        }
    }, this, preferLocal: false);

    // ---- closing ----

    public void Close(byte reasonCode, string? reasonString = null) => End(reasonCode, reasonString, KindOf(reasonCode));

    static DisconnectKind KindOf(byte reasonCode) => reasonCode switch
    {
        ReasonCode.SessionTakenOver => DisconnectKind.TakenOver,
        ReasonCode.KeepAliveTimeout => DisconnectKind.KeepAliveTimeout,
        ReasonCode.MalformedPacket or ReasonCode.ProtocolError or ReasonCode.ReceiveMaximumExceeded or ReasonCode.TopicAliasInvalid
            or ReasonCode.PacketTooLarge or ReasonCode.MessageRateTooHigh or ReasonCode.TopicNameInvalid or ReasonCode.TopicFilterInvalid
            or ReasonCode.PayloadFormatInvalid or ReasonCode.QoSNotSupported or ReasonCode.RetainNotSupported
            or ReasonCode.PacketIdentifierInUse => DisconnectKind.ProtocolError,
        _ => DisconnectKind.Administrative,
    };

    /// <summary>Writes DISCONNECT (MQTT 5, after CONNACK) and stops reading; the read loop ends the connection.</summary>
    void End(byte reasonCode, string? reasonString, DisconnectKind kind, bool sendDisconnect = true)
    {
        lock (_gate)
        {
            if (_closing)
            {
                return;
            }
            _closing = true;
            _closeKind = kind;
            if (sendDisconnect && _connAckSent && _version == MqttVersion.V500 && !_outputCompleted)
            {
                var disconnect = new DisconnectPacket { ReasonCode = reasonCode, ReasonString = ShortReason(reasonString) };
                WriteLocked(static (output, version, state) => MqttPacketWriter.Write(output, version, (MqttPacket)state!), disconnect);
            }
        }
        WakeReader();
    }

    /// <summary>
    /// A reason string short enough for any client: it may quote what the client sent (a topic of up to 64 KiB), and a
    /// DISCONNECT must fit the client's maximum packet size (MQTT-3.1.2-25); without one the reason code still says why.
    /// </summary>
    string? ShortReason(string? reason)
    {
        const int MaxLength = 200;
        if (reason is null || (_clientMaximumPacketSize != 0 && _clientMaximumPacketSize < 3 * MaxLength + 16))
        {
            return null;
        }
        return reason.Length <= MaxLength ? reason : reason[..MaxLength];
    }

    /// <summary>After the read loop: tells the session once, lets the last packets out (briefly), completes the transport.</summary>
    async Task EndAsync()
    {
        DisconnectKind kind;
        lock (_gate)
        {
            _closing = true;
            kind = _closeKind;
        }
        _timer?.Dispose();
        _packetTimer?.Dispose();
        if (_handler is { } handler)
        {
            try
            {
                await handler.OnConnectionClosedAsync(kind).ConfigureAwait(false);
            }
            catch (Exception e)
            {
                LogFailure(_logger, e, _endpoint.RemoteAddress, _clientId);
            }
        }
        var deadline = _time.GetTimestamp() + _time.TimestampFrequency;
        while (true)
        {
            Task? flushing;
            lock (_gate)
            {
                flushing = _flushing;
                if (flushing is null || _outputCompleted)
                {
                    _outputCompleted = true;
                    break;
                }
            }
            var left = _time.GetElapsedTime(_time.GetTimestamp(), deadline);
            if (left <= TimeSpan.Zero || await Task.WhenAny(flushing, Task.Delay(left, _time)).ConfigureAwait(false) != flushing)
            {
                lock (_gate)
                {
                    _outputCompleted = true;
                }
                break;
            }
        }
        await _transport.Output.CompleteAsync().ConfigureAwait(false);
        await _transport.Input.CompleteAsync().ConfigureAwait(false);
        _overflow?.Reader.Complete();
        _overflow?.Writer.Complete();
    }

    [LoggerMessage(Level = LogLevel.Error, Message = "Connection from {Endpoint} (client {ClientId}) failed")]
    static partial void LogFailure(ILogger logger, Exception exception, string endpoint, string? clientId);
}
