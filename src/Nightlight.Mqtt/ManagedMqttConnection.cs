using System.Buffers;
using Microsoft.Extensions.Logging;
using MQTTnet;
using MQTTnet.Formatter;
using MQTTnet.Packets;
using MQTTnet.Protocol;
using Nightlight.Protocol;

namespace Nightlight.Mqtt;

/// <summary>
/// One MQTT connection that stays up: it connects with a timeout, reconnects with capped exponential backoff and
/// jitter, re-subscribes after every reconnect, and falls back from MQTT 5 to 3.1.1 for brokers that only speak
/// 3.1.1. MQTTnet 5 has no managed client, so this is ours. Owns the MQTTnet client it creates.
/// </summary>
public sealed class ManagedMqttConnection : IAsyncDisposable
{
    readonly MqttConnectionOptions _options;
    readonly ILogger _logger;
    readonly IMqttClient _client;
    readonly PipelinedClientAdapterFactory _adapters;
    readonly List<(string Filter, MqttQualityOfServiceLevel Qos)> _subscriptions = [];
    readonly Lock _gate = new();
    readonly SemaphoreSlim _lost = new(0, 1);
    readonly CancellationTokenSource _stopping = new();
    readonly TaskCompletionSource _firstConnect = new(TaskCreationOptions.RunContinuationsAsynchronously);
    readonly Dictionary<BrokerAddress, MqttProtocolVersion> _fallbacks = [];
    // The broker whose last session broke while subscribing: its next session subscribes at QoS 0 (see ResubscribeAsync).
    BrokerAddress? _subscribeAtMostOnce;
    // Acknowledgements held back by the handler (DeferAcknowledgement), in the order the receive loop delivered their
    // QoS 1/2 messages (null: acknowledged as usual); MQTTnet's message event takes them in the same order.
    readonly System.Collections.Concurrent.ConcurrentQueue<DeferredAcknowledgement?> _delivered = new();
    DeferredAcknowledgement? _delivering;
    int _session;
    Task? _loop;
    int _brokerIndex;
    volatile bool _ready;

    /// <summary>Creates the connection; nothing happens on the network until <see cref="StartAsync"/>.</summary>
    public ManagedMqttConnection(MqttConnectionOptions options, ILogger logger)
    {
        if (string.IsNullOrEmpty(options.ClientId))
        {
            throw new ArgumentException("A client id is required.", nameof(options));
        }
        if (options.Brokers.Count == 0)
        {
            throw new ArgumentException("At least one broker address is required.", nameof(options));
        }
        _options = options;
        _logger = logger;
        _adapters = new PipelinedClientAdapterFactory(ClientTlsSettings.From(options));
        if (options.DeliverOnReceiveLoop)
        {
            _adapters.Deliver = DeliverAsync;
        }
        _client = _adapters.CreateClient();
        _client.DisconnectedAsync += OnDisconnectedAsync;
        _client.ApplicationMessageReceivedAsync += OnMessageAsync;
    }

    /// <summary>Called for every message on a subscribed topic, in arrival order, one at a time.</summary>
    public Func<string, ReadOnlySequence<byte>, Task>? MessageReceived { get; set; }

    /// <summary>Called after every successful connect and re-subscribe; the flag is true on a reconnect.</summary>
    public Func<bool, Task>? Connected { get; set; }

    /// <summary>
    /// True while connected to a broker and subscribed: a connection counts as up only once every subscription was
    /// acknowledged, so nothing is published before the device can hear the answer.
    /// </summary>
    public bool IsConnected => _ready && _client.IsConnected;

    // Whether this outage's "cannot reach" and "cannot verify" warnings were said; the connect loop is their only writer.
    bool _unreachableSaid;
    bool _untrustedSaid;

    /// <summary>The broker this connection uses now, or last used.</summary>
    public BrokerAddress CurrentBroker => _options.Brokers[_brokerIndex % _options.Brokers.Count];

    /// <summary>The protocol version of the current or last connection.</summary>
    public MqttProtocolVersion? ProtocolVersion { get; private set; }

    /// <summary>QoS 1/2 publishes the broker accepts in flight at once (MQTT 5 Receive Maximum; 65,535 when not limited).</summary>
    public int ReceiveMaximum { get; private set; } = ushort.MaxValue;

    /// <summary>How many times the connection was lost and made again.</summary>
    public int Reconnects { get; private set; }

    /// <summary>The client id this connection uses.</summary>
    public string ClientId => _options.ClientId;

    /// <summary>
    /// Adds a subscription that is made now (when connected) and again after every reconnect.
    /// </summary>
    public async Task SubscribeAsync(string filter, MqttQualityOfServiceLevel qos, CancellationToken cancellationToken = default)
    {
        lock (_gate)
        {
            _subscriptions.Add((filter, qos));
        }
        if (IsConnected)
        {
            await _client.SubscribeAsync(
                new MqttClientSubscribeOptionsBuilder().WithTopicFilter(filter, qos).Build(), cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Starts the connect loop and waits until the first connection succeeds or <paramref name="cancellationToken"/>
    /// fires. The loop keeps reconnecting in the background until disposed.
    /// </summary>
    public async Task StartAsync(CancellationToken cancellationToken)
    {
        _loop ??= Task.Run(() => RunAsync(_stopping.Token), CancellationToken.None);
        await _firstConnect.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Starts the connect loop without waiting for the first connection: a device samples while offline too.</summary>
    public void Start() => _loop ??= Task.Run(() => RunAsync(_stopping.Token), CancellationToken.None);

    /// <summary>
    /// Holds back the packets written on this connection until the returned hold is disposed, so that publishes made
    /// one after another (a server's answers to a run of readings) leave in one socket write rather than one each.
    /// Nothing waits for the broker inside a hold: a write that would is made first.
    /// </summary>
    public WriteHold HoldWrites()
    {
        if (_adapters.Current is not { IsOpen: true } adapter)
        {
            return default;
        }
        adapter.Hold();
        return new WriteHold(adapter);
    }

    /// <summary>
    /// Publishes when connected. Returns false, without throwing, when there is no connection or it breaks during the
    /// publish: the caller's offline policy decides what happens to the message.
    /// </summary>
    public async Task<bool> TryPublishAsync(string topic, ReadOnlyMemory<byte> payload, MqttQualityOfServiceLevel qos = MqttQualityOfServiceLevel.AtMostOnce,
        bool retain = false, CancellationToken cancellationToken = default)
    {
        if (qos == MqttQualityOfServiceLevel.AtMostOnce)
        {
            return await TryPublishAtMostOnceAsync(topic, payload, retain, cancellationToken).ConfigureAwait(false);
        }
        var accepted = await PublishInOrderAsync(topic, payload, qos, retain, cancellationToken).ConfigureAwait(false);
        return await accepted.ConfigureAwait(false);
    }

    /// <summary>A QoS 0 publish written by the connection itself (see PublishPipelineAdapter.SendAtMostOnceAsync).</summary>
    async Task<bool> TryPublishAtMostOnceAsync(string topic, ReadOnlyMemory<byte> payload, bool retain, CancellationToken cancellationToken)
    {
        if (!IsConnected || _adapters.Current is not { IsOpen: true } adapter)
        {
            return false;
        }
        // A caller's mistake, not a broken link: it throws, on every path.
        ArgumentException.ThrowIfNullOrEmpty(topic);
        try
        {
            // As MQTTnet's client does: a topic with wildcards is not published (and the catch below says so).
            MqttTopicValidator.ThrowIfInvalid(topic);
            return await adapter.SendAtMostOnceAsync(topic, payload, retain, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (!cancellationToken.IsCancellationRequested)
        {
            _logger.LogDebug("Publish to {Topic} failed: {Error}", topic, e.Message);
            return false;
        }
    }

    /// <summary>
    /// <see cref="TryPublishAsync"/> in two steps: completes once the publish has left (written to the connection), so
    /// publishes made one after another leave in that order, with a task of what <see cref="TryPublishAsync"/> would
    /// return. At QoS 1 the caller need not wait for the broker's acknowledgement before it sends the next publish.
    /// </summary>
    public async Task<Task<bool>> PublishInOrderAsync(string topic, ReadOnlyMemory<byte> payload, MqttQualityOfServiceLevel qos = MqttQualityOfServiceLevel.AtMostOnce,
        bool retain = false, CancellationToken cancellationToken = default)
    {
        if (qos == MqttQualityOfServiceLevel.AtMostOnce)
        {
            // Written once it returns: nothing is left to wait for.
            return await TryPublishAtMostOnceAsync(topic, payload, retain, cancellationToken).ConfigureAwait(false) ? Published : NotPublished;
        }
        if (!IsConnected)
        {
            return NotPublished;
        }
        // A caller's mistake, not a broken link: it throws, on every path.
        ArgumentException.ThrowIfNullOrEmpty(topic);
        try
        {
            if (qos == MqttQualityOfServiceLevel.AtLeastOnce && _adapters.Current is { IsOpen: true } adapter)
            {
                // The connection matches the PUBACK itself: MQTTnet's per-publish waiter, lock and task chain cost more
                // than the publish (see PublishPipelineAdapter).
                var acknowledged = await adapter.SendAtLeastOnceAsync(topic, payload, retain, cancellationToken).ConfigureAwait(false);
                return WhenAcknowledgedAsync(topic, acknowledged, cancellationToken);
            }
            var message = new MqttApplicationMessageBuilder()
                .WithTopic(topic)
                .WithPayload(new ReadOnlySequence<byte>(payload))
                .WithQualityOfServiceLevel(qos)
                .WithRetainFlag(retain)
                .Build();
            var result = await _client.PublishAsync(message, cancellationToken).ConfigureAwait(false);
            return result.IsSuccess ? Published : NotPublished;
        }
        catch (Exception e) when (!cancellationToken.IsCancellationRequested)
        {
            // A broken link fails pending publishes with whatever the receive loop saw (socket, I/O, disconnect
            // exceptions): each means "not delivered", which the offline policy handles.
            _logger.LogDebug("Publish to {Topic} failed: {Error}", topic, e.Message);
            return NotPublished;
        }
    }

    static readonly Task<bool> Published = Task.FromResult(true);
    static readonly Task<bool> NotPublished = Task.FromResult(false);

    async Task<bool> WhenAcknowledgedAsync(string topic, Task<bool> acknowledged, CancellationToken cancellationToken)
    {
        try
        {
            return await acknowledged.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (!cancellationToken.IsCancellationRequested)
        {
            _logger.LogDebug("Publish to {Topic} failed: {Error}", topic, e.Message);
            return false;
        }
    }

    /// <summary>
    /// Publishes <paramref name="payloads"/> to <paramref name="topic"/> at QoS 1, in order, keeping up to
    /// <paramref name="window"/> unacknowledged (and never more than the broker's Receive Maximum). Much cheaper per
    /// message than one <see cref="TryPublishAsync"/> each: acknowledgements are counted as they are read, not awaited
    /// one by one. Returns how many from the front the broker acknowledged; the rest were refused, or the connection
    /// broke before their acknowledgement came, and are the caller's to send again. Never throws for a broken link.
    /// </summary>
    public async Task<int> TryPublishSequenceAsync(string topic, IReadOnlyList<byte[]> payloads, int window, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(payloads);
        if (!IsConnected || _adapters.Current is not { IsOpen: true } adapter)
        {
            return 0;
        }
        return await adapter.PublishSequenceAsync(topic, payloads, window, cancellationToken).ConfigureAwait(false);
    }

    async Task RunAsync(CancellationToken stopping)
    {
        var failures = 0;
        if (_options.WaitBeforeConnecting is { } wait)
        {
            try
            {
                await wait(stopping).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
        while (!stopping.IsCancellationRequested)
        {
            if (!_client.IsConnected)
            {
                if (await TryConnectAsync(stopping).ConfigureAwait(false))
                {
                    var reconnect = _firstConnect.Task.IsCompleted;
                    if (reconnect)
                    {
                        Reconnects++;
                    }
                    failures = 0;
                    try
                    {
                        await ResubscribeAsync(stopping).ConfigureAwait(false);
                        _ready = _client.IsConnected;
                        _firstConnect.TrySetResult();
                        if (Connected is { } connected)
                        {
                            await connected(reconnect).ConfigureAwait(false);
                        }
                    }
                    catch (Exception e) when (!stopping.IsCancellationRequested)
                    {
                        _logger.LogWarning("Connected to {Broker} but setting up the session failed: {Error}", CurrentBroker, e.Message);
                        // A session without its subscriptions would publish into the void: drop it and connect again.
                        await DropSessionAsync().ConfigureAwait(false);
                        continue;
                    }
                    catch (Exception) when (stopping.IsCancellationRequested)
                    {
                        return; // Disposed while setting up the session: disposing does not fail either.
                    }
                }
                else
                {
                    failures++;
                    _brokerIndex++;
                    var delay = Backoff(failures);
                    try
                    {
                        await Task.Delay(delay, stopping).ConfigureAwait(false);
                    }
                    catch (OperationCanceledException)
                    {
                        return;
                    }
                    continue;
                }
            }
            try
            {
                await _lost.WaitAsync(stopping).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }

    async Task DropSessionAsync()
    {
        _ready = false;
        try
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(2));
            await _client.DisconnectAsync(new MqttClientDisconnectOptionsBuilder().Build(), timeout.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (e is MQTTnet.Exceptions.MqttCommunicationException or OperationCanceledException or InvalidOperationException)
        {
            _logger.LogDebug("Dropping the half set-up session of {ClientId} did not complete: {Error}", _options.ClientId, e.Message);
        }
        await Task.Delay(_options.ReconnectMinDelay).ConfigureAwait(false);
    }

    TimeSpan Backoff(int failures)
    {
        var exponent = Math.Min(failures - 1, 16);
        var ms = Math.Min(_options.ReconnectMaxDelay.TotalMilliseconds, _options.ReconnectMinDelay.TotalMilliseconds * Math.Pow(2, exponent));
        // Full jitter in the upper half keeps a fleet that lost its broker together from reconnecting in lockstep.
        return TimeSpan.FromMilliseconds(ms / 2 + Random.Shared.NextDouble() * ms / 2);
    }

    async Task<bool> TryConnectAsync(CancellationToken stopping)
    {
        try
        {
            return await TryConnectOnceAsync(stopping).ConfigureAwait(false);
        }
        catch (Exception) when (stopping.IsCancellationRequested)
        {
            // Disposed while connecting: the loop ends, and disposing does not fail. The attempt may end in a socket
            // error rather than a cancellation (seen when the broker's end closed as the connect was cut short).
            return false;
        }
    }

    async Task<bool> TryConnectOnceAsync(CancellationToken stopping)
    {
        var broker = CurrentBroker;
        var versions = _options.Protocol switch
        {
            MqttProtocol.V311 => [MqttProtocolVersion.V311],
            MqttProtocol.V500 => [MqttProtocolVersion.V500],
            _ when _fallbacks.TryGetValue(broker, out var known) => [known],
            _ => new[] { MqttProtocolVersion.V500, MqttProtocolVersion.V311 },
        };
        foreach (var version in versions)
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(stopping);
            timeout.CancelAfter(_options.ConnectTimeout);
            try
            {
                var result = await _client.ConnectAsync(BuildOptions(broker, version), timeout.Token).ConfigureAwait(false);
                if (result.ResultCode != MqttClientConnectResultCode.Success)
                {
                    _logger.LogWarning("Broker {Broker} refused {ClientId}: {Reason}", broker, _options.ClientId, result.ResultCode);
                    continue;
                }
                ProtocolVersion = version;
                Interlocked.Increment(ref _session);
                _delivered.Clear();
                // MQTT 5 brokers say how many QoS 1/2 publishes they take in flight; exceeding it is a protocol error.
                ReceiveMaximum = version == MqttProtocolVersion.V500 && result.ReceiveMaximum is > 0 and { } receiveMaximum ? receiveMaximum : ushort.MaxValue;
                if (_options.Protocol == MqttProtocol.Auto && version == MqttProtocolVersion.V311)
                {
                    _fallbacks[broker] = version;
                }
                _unreachableSaid = false;
                _untrustedSaid = false;
                _logger.LogInformation("{ClientId} connected to {Broker} (MQTT {Version})", _options.ClientId, broker, VersionName(version));
                return true;
            }
            catch (Exception e) when (!stopping.IsCancellationRequested)
            {
                _logger.LogDebug("Connecting {ClientId} to {Broker} with MQTT {Version} failed: {Error}", _options.ClientId, broker, VersionName(version), e.Message);
                if (Find<BrokerCertificateException>(e) is { } refused)
                {
                    // Another protocol version would meet the same certificate.
                    if (_untrustedSaid)
                    {
                        _logger.LogDebug("{ClientId} still cannot verify the TLS certificate of broker {Broker}: {Reason}", _options.ClientId, broker, refused.Message);
                    }
                    else
                    {
                        _untrustedSaid = true;
                        _logger.LogWarning("{ClientId} cannot verify the TLS certificate of broker {Broker}: {Reason}. Check the CA file (--cafile) " +
                            "and the broker address; trying again quietly", _options.ClientId, broker, refused.Message);
                    }
                    return false;
                }
                if (e is OperationCanceledException || IsUnreachable(e))
                {
                    // Nothing listens, or it did not answer in time: a lower protocol version will not help. Said once
                    // per outage: a warning on every retry buried everything else on the terminal.
                    if (_unreachableSaid)
                    {
                        _logger.LogDebug("Still cannot reach broker {Broker}: {Error}", broker, Describe(e));
                    }
                    else
                    {
                        _unreachableSaid = true;
                        _logger.LogWarning("Cannot reach broker {Broker}: {Error}. Start one (nightlight broker) or check the broker address (--broker); " +
                            "trying again quietly until it answers", broker, Describe(e));
                    }
                    return false;
                }
            }
        }
        _logger.LogWarning("Broker {Broker} did not accept {ClientId} with any protocol version tried", broker, _options.ClientId);
        return false;
    }

    static bool IsUnreachable(Exception e) =>
        e is System.Net.Sockets.SocketException || e.InnerException is System.Net.Sockets.SocketException ||
        e.InnerException?.InnerException is System.Net.Sockets.SocketException;

    static T? Find<T>(Exception? e) where T : Exception
    {
        for (; e is not null; e = e.InnerException)
        {
            if (e is T found)
            {
                return found;
            }
        }
        return null;
    }

    static string Describe(Exception e) => e is OperationCanceledException ? "connect timed out" : (e.InnerException ?? e).Message;

    static string VersionName(MqttProtocolVersion version) => version == MqttProtocolVersion.V500 ? "5.0" : "3.1.1";

    MqttClientOptions BuildOptions(BrokerAddress broker, MqttProtocolVersion version)
    {
        var builder = new MqttClientOptionsBuilder()
            .WithClientId(_options.ClientId)
            .WithProtocolVersion(version)
            .WithCleanSession(_options.CleanSession)
            .WithKeepAlivePeriod(_options.KeepAlive)
            .WithTimeout(_options.ConnectTimeout)
            // One write per packet instead of header and payload apart: half the TCP segments with Nagle off.
            .WithoutPacketFragmentation();
        builder = broker.IsWebSocket
            ? builder.WithWebSocketServer(o => o.WithUri(broker.ToString()))
            : builder.WithTcpServer(broker.Host, broker.Port);
        if (!_options.CleanSession && version == MqttProtocolVersion.V500)
        {
            builder = builder.WithSessionExpiryInterval(_options.SessionExpiry is { } expiry
                ? (uint)Math.Clamp(expiry.TotalSeconds, 1, uint.MaxValue - 1) : uint.MaxValue);
        }
        if (_options.Username is { } user)
        {
            builder = builder.WithCredentials(user, _options.Password ?? "");
        }
        if (_options.UseTls || broker.IsTls)
        {
            // Only the switch: our adapter factory's TLS channels do the rest, from ClientTlsSettings.
            builder = builder.WithTlsOptions(tls => tls.UseTls());
        }
        if (_options.Will is { } will)
        {
            builder = builder.WithWillTopic(will.Topic).WithWillPayload(will.Payload).WithWillRetain()
                .WithWillQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce);
        }
        return builder.Build();
    }

    async Task ResubscribeAsync(CancellationToken cancellationToken)
    {
        (string Filter, MqttQualityOfServiceLevel Qos)[] subscriptions;
        lock (_gate)
        {
            subscriptions = [.. _subscriptions];
        }
        if (subscriptions.Length == 0)
        {
            return;
        }
        // A RabbitMQ cluster keeps a client's QoS 1 subscription queue on one node; while that node is down every other
        // node drops a QoS 1 subscribe from the same client id. Failing over must still work, so after such a failure the
        // next session on that broker subscribes at QoS 0 (commands arrive while connected), and the one after tries QoS 1.
        var atMostOnce = Equals(_subscribeAtMostOnce, CurrentBroker);
        _subscribeAtMostOnce = null;
        if (atMostOnce)
        {
            _logger.LogWarning("{ClientId} subscribes at QoS 0 on {Broker}: its QoS 1 subscription was refused (a cluster node holding it may be down)",
                _options.ClientId, CurrentBroker);
        }
        var builder = new MqttClientSubscribeOptionsBuilder();
        foreach (var (filter, qos) in subscriptions)
        {
            builder.WithTopicFilter(filter, atMostOnce ? MqttQualityOfServiceLevel.AtMostOnce : qos);
        }
        try
        {
            await _client.SubscribeAsync(builder.Build(), cancellationToken).ConfigureAwait(false);
        }
        catch (Exception) when (!atMostOnce && !cancellationToken.IsCancellationRequested && subscriptions.Any(s => s.Qos != MqttQualityOfServiceLevel.AtMostOnce))
        {
            _subscribeAtMostOnce = CurrentBroker;
            throw;
        }
    }

    Task OnDisconnectedAsync(MqttClientDisconnectedEventArgs e)
    {
        _ready = false;
        if (e.ClientWasConnected && !_stopping.IsCancellationRequested)
        {
            _logger.LogWarning("{ClientId} lost its connection to {Broker}: {Reason}", _options.ClientId, CurrentBroker,
                e.Exception?.Message ?? e.ReasonString ?? e.Reason.ToString());
        }
        if (_stopping.IsCancellationRequested)
        {
            return Task.CompletedTask; // Disposed or disposing: no loop waits for the signal, and the semaphore may be gone.
        }
        if (_lost.CurrentCount == 0)
        {
            try
            {
                _lost.Release();
            }
            catch (SemaphoreFullException)
            {
                // Already signalled by a concurrent disconnect event; one wake-up is enough.
            }
        }
        return Task.CompletedTask;
    }

    /// <summary>
    /// Called by <see cref="MessageReceived"/> while it handles a QoS 1 or 2 message on the receive loop
    /// (<see cref="MqttConnectionOptions.DeliverOnReceiveLoop"/>): the broker's acknowledgement waits until the returned
    /// action runs (a reading stored, for example). Null when the message needs none (QoS 0, or not on the receive loop).
    /// An acknowledgement whose connection has closed meanwhile is not sent: the broker hands the message out again.
    /// </summary>
    public Action? DeferAcknowledgement()
    {
        if (_delivering is not { } delivering)
        {
            return null;
        }
        delivering.Deferred = true;
        return delivering.Acknowledge;
    }

    /// <summary>An acknowledgement held back until both the handler is done and MQTTnet's event has bound how to send it.</summary>
    sealed class DeferredAcknowledgement(ManagedMqttConnection owner, int session)
    {
        readonly Lock _gate = new();
        Func<Task>? _send;
        bool _done;

        public bool Deferred { get; set; }

        public void Acknowledge()
        {
            Func<Task>? send;
            lock (_gate)
            {
                _done = true;
                send = _send;
            }
            if (send is not null)
            {
                Send(send);
            }
        }

        public void Bind(Func<Task> send)
        {
            bool done;
            lock (_gate)
            {
                _send = send;
                done = _done;
            }
            if (done)
            {
                Send(send);
            }
        }

        void Send(Func<Task> send)
        {
            if (Volatile.Read(ref owner._session) != session || !owner._client.IsConnected)
            {
                return;
            }
            _ = SendAsync(send);
        }

        async Task SendAsync(Func<Task> send)
        {
            try
            {
                await send().ConfigureAwait(false);
            }
            catch (Exception e)
            {
                owner._logger.LogDebug("Acknowledgement not sent: {Error}", e.Message);
            }
        }
    }

    async Task OnMessageAsync(MqttApplicationMessageReceivedEventArgs e)
    {
        if (_options.DeliverOnReceiveLoop && e.ApplicationMessage.QualityOfServiceLevel != MqttQualityOfServiceLevel.AtMostOnce &&
            _delivered.TryDequeue(out var deferred) && deferred is not null)
        {
            e.AutoAcknowledge = false;
            deferred.Bind(() => e.AcknowledgeAsync(CancellationToken.None));
        }
        // On the receive loop, the handler had the message already: MQTTnet only acknowledges it.
        if (!_options.DeliverOnReceiveLoop && MessageReceived is { } handler)
        {
            await handler(e.ApplicationMessage.Topic, e.ApplicationMessage.Payload).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// A publish read on the receive loop (<see cref="MqttConnectionOptions.DeliverOnReceiveLoop"/>): true once the
    /// handler took it, false when the handler failed, which is logged and leaves a QoS 1 or 2 message unacknowledged.
    /// </summary>
    ValueTask<bool> DeliverAsync(MqttPublishPacket publish)
    {
        if (MessageReceived is not { } handler)
        {
            return ValueTask.FromResult(true);
        }
        var acknowledged = publish.QualityOfServiceLevel != MqttQualityOfServiceLevel.AtMostOnce;
        var delivering = acknowledged ? new DeferredAcknowledgement(this, Volatile.Read(ref _session)) : null;
        _delivering = delivering;
        Task handling;
        try
        {
            handling = handler(publish.Topic, publish.Payload);
        }
        catch (Exception e)
        {
            _delivering = null;
            LogHandlerFailed(publish.Topic, e);
            return ValueTask.FromResult(false);
        }
        if (handling.IsCompletedSuccessfully)
        {
            Delivered(delivering);
            return ValueTask.FromResult(true);
        }
        return AwaitHandlerAsync(handling, publish.Topic, delivering);
    }

    /// <summary>The handler took a message: its acknowledgement (deferred or not) joins the queue MQTTnet's event reads.</summary>
    void Delivered(DeferredAcknowledgement? delivering)
    {
        _delivering = null;
        if (delivering is not null)
        {
            _delivered.Enqueue(delivering.Deferred ? delivering : null);
        }
    }

    async ValueTask<bool> AwaitHandlerAsync(Task handling, string topic, DeferredAcknowledgement? delivering)
    {
        try
        {
            await handling.ConfigureAwait(false);
            Delivered(delivering);
            return true;
        }
        catch (Exception e)
        {
            _delivering = null;
            LogHandlerFailed(topic, e);
            return false;
        }
    }

    void LogHandlerFailed(string topic, Exception e)
    {
        if (!_stopping.IsCancellationRequested)
        {
            _logger.LogError(e, "Handling a message on {Topic} failed", TelemetryParser.Printable(topic));
        }
    }

    /// <summary>Stops reconnecting and disconnects cleanly (no last will is published).</summary>
    public async ValueTask DisposeAsync()
    {
        await _stopping.CancelAsync().ConfigureAwait(false);
        if (_loop is not null)
        {
            await _loop.ConfigureAwait(false);
        }
        if (_client.IsConnected)
        {
            try
            {
                using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(2));
                await _client.DisconnectAsync(new MqttClientDisconnectOptionsBuilder().WithReason(MqttClientDisconnectOptionsReason.NormalDisconnection).Build(),
                    timeout.Token).ConfigureAwait(false);
            }
            catch (Exception e) when (e is MQTTnet.Exceptions.MqttCommunicationException or OperationCanceledException)
            {
                _logger.LogDebug("Disconnect of {ClientId} did not complete: {Error}", _options.ClientId, e.Message);
            }
        }
        _client.Dispose();
        _stopping.Dispose();
        _lost.Dispose();
    }
}
