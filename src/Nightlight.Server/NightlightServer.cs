using System.Buffers;
using System.Threading.Channels;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using MQTTnet.Protocol;
using Nightlight.Mqtt;
using Nightlight.Protocol;
using Nightlight.Server.Rules;
using Nightlight.Server.Storage;

namespace Nightlight.Server;

/// <summary>
/// The lesson's server. A telemetry message enters at <see cref="OnMessageAsync"/>, is parsed once into a
/// <see cref="TelemetryMessage"/>, flows through a bounded channel to one consumer that hands it to the store stage
/// (<see cref="TelemetryStoreWriter"/>, never waiting for it) and to the rules, and its commands leave through
/// <see cref="CommandDispatcher"/>. A full channel slows the MQTT client down instead of dropping readings.
/// </summary>
public sealed class NightlightServer : MqttClientService
{
    readonly ServerOptions _options;
    readonly ILogger<NightlightServer> _logger;
    readonly ILoggerFactory _loggerFactory;
    readonly ServerMetrics _metrics;
    readonly ILessonLog _output;
    readonly Channel<Arrival> _readings;
    readonly RuleBook _rules;
    readonly DeviceRegistry _devices;
    readonly TelemetryStoreWriter _store;
    readonly CommandDispatcher _commands;
    IBrokerLink? _connection;
    // Held while readings are decided on, by the consumer or by the receive loop (OnMessageAsync): one at a time, so
    // they share one list of decisions.
    readonly SemaphoreSlim _deciding = new(1, 1);
    readonly List<RuleDecision> _decisions = [];
    // With a group feed, group sensors' readings from the shared subscription are stored but not decided on: their
    // feed copy decides, so a group's state is built from all of its sensors.
    readonly bool _groupsFromFeed;
    CancellationToken _stoppingToken;

    readonly BrokerStartSignal? _brokerStart;
    readonly IInProcessBroker? _inProcessBroker;
    volatile bool _stopping;

    /// <summary>
    /// A reading as it arrived. <see cref="FromGroupFeed"/>: a copy received only to keep group rules whole. <see cref="Done"/>:
    /// run once the reading is stored (or, from the group feed, decided on), for ingest paths that acknowledge.
    /// </summary>
    readonly record struct Arrival(TelemetryMessage Message, DateTimeOffset Arrived, bool FromGroupFeed, Action? Done = null);

    public NightlightServer(IOptions<ServerOptions> options, IOptions<RulesOptions> rules, ILoggerFactory loggerFactory, ServerMetrics metrics,
        ILessonLog output, DeviceRegistry devices, TelemetryStoreWriter store, CommandDispatcher commands, BrokerStartSignal? brokerStart = null,
        IInProcessBroker? inProcessBroker = null)
    {
        _brokerStart = brokerStart;
        _inProcessBroker = inProcessBroker;
        _options = options.Value;
        _loggerFactory = loggerFactory;
        _logger = loggerFactory.CreateLogger<NightlightServer>();
        _metrics = metrics;
        _output = _options.Quiet ? ILessonLog.None : output;
        _rules = new RuleBook(rules.Value, _options.Threshold);
        _groupsFromFeed = (Shared || _options.IngestsFromAmqp) && _rules.Groups.Count > 0;
        _devices = devices;
        _store = store;
        _commands = commands;
        _readings = Channel.CreateBounded<Arrival>(new BoundedChannelOptions(_options.QueueCapacity)
        {
            SingleReader = true,
            FullMode = BoundedChannelFullMode.Wait,
        });
    }

    /// <summary>True while the server holds a connection to its broker.</summary>
    public bool IsConnected => _connection?.IsConnected ?? false;

    /// <summary>Completes once the server is connected and subscribed.</summary>
    public Task Ready => _ready.Task;

    /// <summary>The default rule, as the start-up line says it.</summary>
    public string RuleDescription => _rules.DescribeDefault();

    readonly TaskCompletionSource _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);

    bool Shared => !string.IsNullOrEmpty(_options.SharedSubscriptionGroup);

    /// <summary>The devices whose readings group rules need (for ingest paths that route them, see Ingest/AmqpIngest).</summary>
    public IEnumerable<string> GroupSensors => _rules.GroupSensors;

    /// <summary>
    /// The way in for readings parsed by another ingest path (AMQP). <paramref name="done"/> runs once the reading is
    /// stored (from the group feed: once decided on); a full pipeline makes this wait.
    /// </summary>
    public ValueTask AcceptAsync(TelemetryMessage reading, bool fromGroupFeed, Action? done, CancellationToken cancellationToken)
    {
        if (!fromGroupFeed)
        {
            _metrics.TelemetryReceived(reading.DeviceId);
        }
        return _readings.Writer.WriteAsync(new Arrival(reading, DateTimeOffset.UtcNow, fromGroupFeed, done), cancellationToken);
    }

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        _stoppingToken = stoppingToken;
        var single = string.IsNullOrEmpty(_options.Id) ? null : _options.Id;
        if (single is not null && !Topics.IsValidDeviceId(single))
        {
            throw new OptionsValidationException(ServerOptions.Section, typeof(ServerOptions),
                [$"Server:Id '{single}' is not a valid device id"]);
        }
        var clientId = single is null ? $"nightlight_server-{Guid.NewGuid():N}"[..26] : Topics.ServerClientId(single);
        await using var connection = CreateLink(clientId, out var linkReason);
        _connection = connection;
        _commands.Attach(connection);
        connection.MessageReceived = connection.ReceivesOnBrokerPath
            ? (topic, payload) => OnMessageAsync(topic, payload, fromGroupFeed: false, mayWait: false)
            : (topic, payload) => OnMessageAsync(topic, payload, fromGroupFeed: false);
        var telemetry = single is null ? Topics.AllTelemetry : Topics.Telemetry(single);
        if (Shared)
        {
            telemetry = Topics.Shared(_options.SharedSubscriptionGroup!, telemetry);
        }
        if (_options.IngestsFromAmqp)
        {
            telemetry = "commands only (telemetry from AMQP)";
        }
        else
        {
            await connection.SubscribeAsync(telemetry, MqttQualityOfServiceLevel.AtMostOnce, stoppingToken);
        }
        // Acknowledgements and presence are not shared: every server keeps its registry whole and finds its own commands.
        await connection.SubscribeAsync(single is null ? Topics.AllAcks : Topics.Acks(single), MqttQualityOfServiceLevel.AtLeastOnce, stoppingToken);
        await connection.SubscribeAsync(single is null ? Topics.AllStatus : Topics.Status(single), MqttQualityOfServiceLevel.AtLeastOnce, stoppingToken);

        // Shared subscriptions split a group's sensors across servers; a second, unshared connection gives this
        // server every reading of its group sensors, for the group rules only (see docs/architecture.md).
        ManagedMqttConnection? feed = null;
        if (Shared && _rules.Groups.Count > 0)
        {
            feed = new ManagedMqttConnection(NewConnectionOptions($"nightlight_groups-{Guid.NewGuid():N}"[..26]),
                _loggerFactory.CreateLogger<ManagedMqttConnection>());
            feed.MessageReceived = (topic, payload) => OnMessageAsync(topic, payload, fromGroupFeed: true);
            foreach (var sensor in _rules.GroupSensors)
            {
                await feed.SubscribeAsync(Topics.Telemetry(sensor), MqttQualityOfServiceLevel.AtMostOnce, stoppingToken);
            }
        }
        var consumer = Task.Run(ConsumeAsync, CancellationToken.None);
        try
        {
            await connection.StartAsync(stoppingToken);
            if (feed is not null)
            {
                await feed.StartAsync(stoppingToken);
            }
            _logger.LogInformation("Server listening for {Topic} on {Broker}, {Rule}", telemetry, connection.Description, _rules.DescribeDefault());
            _logger.LogInformation("Server link to the broker: {Link}{Inline}", linkReason,
                connection.ReceivesOnBrokerPath || Environment.GetEnvironmentVariable(ServerOptions.InlineCompletionsVariable) != "1"
                    ? "" : "; socket completions run on the socket thread (Server:InlineSocketCompletions)");
            _ready.TrySetResult();
            await Task.Delay(Timeout.Infinite, stoppingToken);
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
        }
        finally
        {
            if (feed is not null)
            {
                await feed.DisposeAsync();
            }
            _stopping = true;
            _readings.Writer.TryComplete();
            await consumer;
            _commands.Attach(null);
        }
    }

    /// <summary>
    /// A reading that arrived another way than MQTT (the HTTP device API), already parsed by <see cref="TelemetryParser"/>:
    /// it joins the same path as an MQTT reading. False when the server is stopping and takes no more.
    /// </summary>
    public async ValueTask<bool> AcceptAsync(TelemetryMessage reading, CancellationToken cancellationToken)
    {
        try
        {
            await _readings.Writer.WriteAsync(new Arrival(reading, DateTimeOffset.UtcNow, FromGroupFeed: false), cancellationToken);
        }
        catch (ChannelClosedException)
        {
            return false;
        }
        _metrics.TelemetryReceived(reading.DeviceId);
        return true;
    }

    /// <summary>
    /// In memory when the embedded broker runs in this process (<c>Server:InProcess</c>) and nothing needs a real MQTT
    /// session; otherwise an MQTT connection. <paramref name="reason"/> says which and why, for the start-up log.
    /// </summary>
    IBrokerLink CreateLink(string clientId, out string reason)
    {
        if (_inProcessBroker is null)
        {
            reason = "MQTT connection (the broker is another process)";
        }
        else if (!_options.InProcess)
        {
            reason = "MQTT connection over loopback (Server:InProcess is false)";
        }
        else if (Shared)
        {
            // Other server processes may join the same group on this broker: only a real session takes its share.
            reason = "MQTT connection over loopback (a shared subscription needs a real MQTT session)";
        }
        else
        {
            reason = "in process (no network round trip)";
            return _inProcessBroker.CreateLink(clientId);
        }
        // Readings are decided on as they are read, and the answers to one read leave together (see OnMessageAsync).
        var options = NewConnectionOptions(clientId);
        options.DeliverOnReceiveLoop = true;
        return new MqttBrokerLink(new ManagedMqttConnection(options, _loggerFactory.CreateLogger<ManagedMqttConnection>()));
    }

    // Shared subscriptions are MQTT 5 only.
    MqttConnectionOptions NewConnectionOptions(string clientId) => MqttConnectionOptions.From(_options.Broker, clientId,
        Shared ? "5" : _options.Protocol, _options.Username, _options.Password, _brokerStart);

    /// <summary>
    /// One message from the broker. A reading joins the queue: waiting for room when <paramref name="mayWait"/> (an MQTT
    /// connection, which the wait slows down), otherwise counted and logged as dropped when the queue is full (the
    /// in-process link, which must not hold up the broker's receive loop). Acknowledgements and presence never wait.
    /// </summary>
    Task OnMessageAsync(string topic, ReadOnlySequence<byte> payload, bool fromGroupFeed, bool mayWait = true)
    {
        if (!TryRead(topic, payload, fromGroupFeed, out var arrival))
        {
            return Task.CompletedTask;
        }
        if (mayWait && !fromGroupFeed && !_stopping && _readings.Reader.Count == 0 && _deciding.Wait(0))
        {
            // Nothing queued and nothing being decided: this reading is decided on now, on the connection's receive loop,
            // without waking the consumer. Otherwise it queues behind the others, which keeps each device's order.
            if (_readings.Reader.Count == 0)
            {
                return DecideNowAsync(arrival);
            }
            _deciding.Release();
        }
        if (_readings.Writer.TryWrite(arrival))
        {
            return Task.CompletedTask;
        }
        if (mayWait)
        {
            return _readings.Writer.WriteAsync(arrival).AsTask();
        }
        if (_stopping)
        {
            // The queue is closed, not full: readings that arrive while the server stops are not a drop to report.
            return Task.CompletedTask;
        }
        var dropped = _metrics.TelemetryDropped();
        // One line for the first drop and then one per thousand, so a flood cannot flood the log too.
        if (dropped == 1 || dropped % 1000 == 0)
        {
            _logger.LogWarning("Dropped a reading from device {DeviceId}: the server's queue of {Capacity} readings is full ({Dropped} dropped so far)",
                arrival.Message.DeviceId, _options.QueueCapacity, dropped);
        }
        return Task.CompletedTask;
    }

    /// <summary>Parses a message; true with a reading to queue, false when it was handled here (or rejected).</summary>
    bool TryRead(string topic, ReadOnlySequence<byte> payload, bool fromGroupFeed, out Arrival arrival)
    {
        arrival = default;
        if (!Topics.TryParseDeviceTopic(topic, out var deviceId, out var level))
        {
            _metrics.TelemetryRejected();
            _logger.LogWarning("Rejected a message on '{Topic}': not a {{id}}/telemetry topic with a valid device id", TelemetryParser.Printable(topic));
            return false;
        }
        var bytes = payload.IsSingleSegment ? payload.FirstSpan : payload.ToArray();
        switch (level)
        {
            case Topics.TelemetryLevel:
                if (!TelemetryParser.TryParse(deviceId, bytes, out var reading, out var error))
                {
                    _metrics.TelemetryRejected();
                    _logger.LogWarning("Rejected telemetry from device {DeviceId}: {Problem}", deviceId, error);
                    return false;
                }
                if (!fromGroupFeed)
                {
                    _metrics.TelemetryReceived(deviceId);
                }
                arrival = new Arrival(reading, DateTimeOffset.UtcNow, fromGroupFeed);
                return true;
            case Topics.AcksLevel:
                if (CommandAck.TryParse(bytes, out var ack, out var ackError))
                {
                    _commands.Acknowledge(deviceId, ack);
                }
                else
                {
                    _logger.LogWarning("Rejected acknowledgement from device {DeviceId}: {Problem}", deviceId, ackError);
                }
                break;
            case Topics.StatusLevel:
                // An empty payload clears a retained presence: the device is gone.
                var online = false;
                string? mode = null;
                if (bytes.IsEmpty || Presence.TryParse(bytes, out online, out mode))
                {
                    _devices.SetOnline(deviceId, online, DateTimeOffset.UtcNow, mode);
                    _store.DeviceChanged(deviceId);
                }
                else
                {
                    _logger.LogWarning("Ignored presence from device {DeviceId}: expected {{\"online\": true|false}}", deviceId);
                }
                break;
            default:
                _metrics.TelemetryRejected();
                _logger.LogWarning("Rejected a message on '{Topic}': not a topic this server reads", TelemetryParser.Printable(topic));
                break;
        }
        return false;
    }

    async Task ConsumeAsync()
    {
        var queue = _readings.Reader;
        while (await queue.WaitToReadAsync(CancellationToken.None))
        {
            // The answers to the readings queued now leave in one socket write, not one each: at thousands of readings
            // a second those writes (and the broker's reads) cost more than the rules.
            await _deciding.WaitAsync(CancellationToken.None);
            try
            {
                using var hold = _connection?.HoldWrites() ?? default;
                for (var run = 0; run < AnswersPerWrite && queue.TryRead(out var arrival); run++)
                {
                    await HandleAsync(arrival);
                }
            }
            finally
            {
                _deciding.Release();
            }
        }
    }

    /// <summary>A reading decided on where it was read, under <see cref="_deciding"/>, which this releases.</summary>
    async Task DecideNowAsync(Arrival arrival)
    {
        try
        {
            await HandleAsync(arrival);
        }
        finally
        {
            _deciding.Release();
        }
    }

    /// <summary>The most readings whose answers are held back for one write.</summary>
    const int AnswersPerWrite = 128;

    /// <summary>Stores a reading and sends what the rules decide; the caller holds <see cref="_deciding"/>.</summary>
    async Task HandleAsync(Arrival arrival)
    {
        var (reading, arrived, fromFeed, done) = arrival;
        if (!fromFeed)
        {
            _store.TryWrite(_devices.Seen(reading, arrived));
            if (done is not null)
            {
                _store.AfterWrite(done);
            }
        }
        else
        {
            done?.Invoke();
        }
        _decisions.Clear();
        _rules.Decide(reading, arrived, _decisions, groups: fromFeed || !_groupsFromFeed, devices: !fromFeed);
        // A quiet server (fleets, benchmarks) builds no lines: at thousands of readings a second they cost more
        // than the rule.
        var talk = _output.IsOn;
        var who = !talk ? "" : string.IsNullOrEmpty(_options.Id) ? $"server → {reading.DeviceId}" : "server";
        if (talk && !fromFeed)
        {
            _output.Say(who, $"Message received: {reading.ToLessonJson()}");
        }
        foreach (var decision in _decisions)
        {
            if (_commands.IsOverridden(decision.DeviceId, arrived))
            {
                continue;
            }
            if (talk)
            {
                _output.Say(decision.DeviceId == reading.DeviceId ? who : $"server → {decision.DeviceId}", $"Sending message: {new CommandMessage(decision.LedOn)}");
            }
            await _commands.SendRuleCommandAsync(decision.DeviceId, decision.LedOn, decision.Changed, _stoppingToken);
        }
    }
}
