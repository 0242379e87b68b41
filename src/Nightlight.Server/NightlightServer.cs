using System.Buffers;
using System.Threading.Channels;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using MQTTnet.Protocol;
using Nightlight.Device;
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
    readonly LessonOutput _output;
    readonly Channel<Arrival> _readings;
    readonly RuleBook _rules;
    readonly DeviceRegistry _devices;
    readonly TelemetryStoreWriter _store;
    readonly CommandDispatcher _commands;
    ManagedMqttConnection? _connection;

    readonly BrokerStartSignal? _brokerStart;

    /// <summary>
    /// A reading as it arrived. <see cref="FromGroupFeed"/>: a copy received only to keep group rules whole. <see cref="Done"/>:
    /// run once the reading is stored (or, from the group feed, decided on), for ingest paths that acknowledge.
    /// </summary>
    readonly record struct Arrival(TelemetryMessage Message, DateTimeOffset Arrived, bool FromGroupFeed, Action? Done = null);

    public NightlightServer(IOptions<ServerOptions> options, IOptions<RulesOptions> rules, ILoggerFactory loggerFactory, ServerMetrics metrics,
        LessonOutput output, DeviceRegistry devices, TelemetryStoreWriter store, CommandDispatcher commands, BrokerStartSignal? brokerStart = null)
    {
        _brokerStart = brokerStart;
        _options = options.Value;
        _loggerFactory = loggerFactory;
        _logger = loggerFactory.CreateLogger<NightlightServer>();
        _metrics = metrics;
        _output = _options.Quiet ? LessonOutput.None : output;
        _rules = new RuleBook(rules.Value, _options.Threshold);
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
        var single = string.IsNullOrEmpty(_options.Id) ? null : _options.Id;
        if (single is not null && !Topics.IsValidDeviceId(single))
        {
            throw new OptionsValidationException(ServerOptions.Section, typeof(ServerOptions),
                [$"Server:Id '{single}' is not a valid device id"]);
        }
        var connectionOptions = NewConnectionOptions(single is null ? $"nightlight_server-{Guid.NewGuid():N}"[..26] : Topics.ServerClientId(single));
        await using var connection = new ManagedMqttConnection(connectionOptions, _loggerFactory.CreateLogger<ManagedMqttConnection>());
        _connection = connection;
        _commands.Attach(connection);
        connection.MessageReceived = (topic, payload) => OnMessageAsync(topic, payload, fromGroupFeed: false);
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
        var consumer = Task.Run(() => ConsumeAsync(stoppingToken), CancellationToken.None);
        try
        {
            await connection.StartAsync(stoppingToken);
            if (feed is not null)
            {
                await feed.StartAsync(stoppingToken);
            }
            _logger.LogInformation("Server listening for {Topic} on {Broker}, {Rule}", telemetry, connection.CurrentBroker, _rules.DescribeDefault());
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

    MqttConnectionOptions NewConnectionOptions(string clientId) => new()
    {
        Brokers = ConnectionSettings.ParseBrokers(_options.Broker),
        ClientId = clientId,
        Protocol = Shared ? MqttProtocol.V500 : ConnectionSettings.ParseProtocol(_options.Protocol),
        Username = string.IsNullOrEmpty(_options.Username) ? null : _options.Username,
        Password = _options.Password,
        WaitBeforeConnecting = _brokerStart is null ? null : ct => _brokerStart.Started.WaitAsync(ct),
    };

    async Task OnMessageAsync(string topic, ReadOnlySequence<byte> payload, bool fromGroupFeed)
    {
        if (!Topics.TryParseDeviceTopic(topic, out var deviceId, out var level))
        {
            _metrics.TelemetryRejected();
            _logger.LogWarning("Rejected a message on '{Topic}': not a {{id}}/telemetry topic with a valid device id", TelemetryParser.Printable(topic));
            return;
        }
        var bytes = payload.IsSingleSegment ? payload.FirstSpan : payload.ToArray();
        switch (level)
        {
            case Topics.TelemetryLevel:
                if (!TelemetryParser.TryParse(deviceId, bytes, out var reading, out var error))
                {
                    _metrics.TelemetryRejected();
                    _logger.LogWarning("Rejected telemetry from device {DeviceId}: {Problem}", deviceId, error);
                    return;
                }
                if (!fromGroupFeed)
                {
                    _metrics.TelemetryReceived(deviceId);
                }
                await _readings.Writer.WriteAsync(new Arrival(reading, DateTimeOffset.UtcNow, fromGroupFeed));
                break;
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
    }

    async Task ConsumeAsync(CancellationToken stoppingToken)
    {
        var decisions = new List<RuleDecision>();
        // With a group feed, group sensors' readings from the shared subscription are stored but not decided on:
        // their feed copy decides, so a group's state is built from all of its sensors.
        var groupsFromFeed = (Shared || _options.IngestsFromAmqp) && _rules.Groups.Count > 0;
        await foreach (var (reading, arrived, fromFeed, done) in _readings.Reader.ReadAllAsync(CancellationToken.None))
        {
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
            decisions.Clear();
            _rules.Decide(reading, arrived, decisions, groups: fromFeed || !groupsFromFeed, devices: !fromFeed);
            // A quiet server (fleets, benchmarks) builds no lines: at thousands of readings a second they cost more
            // than the rule.
            var talk = _output.IsOn;
            var who = !talk ? "" : string.IsNullOrEmpty(_options.Id) ? $"server → {reading.DeviceId}" : "server";
            if (talk && !fromFeed)
            {
                _output.Say(who, $"Message received: {reading.ToLessonJson()}");
            }
            foreach (var decision in decisions)
            {
                if (_commands.IsOverridden(decision.DeviceId, arrived))
                {
                    continue;
                }
                if (talk)
                {
                    _output.Say(decision.DeviceId == reading.DeviceId ? who : $"server → {decision.DeviceId}", $"Sending message: {new CommandMessage(decision.LedOn)}");
                }
                await _commands.SendRuleCommandAsync(decision.DeviceId, decision.LedOn, decision.Changed, stoppingToken);
            }
        }
    }
}
