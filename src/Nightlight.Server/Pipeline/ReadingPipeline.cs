using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Nightlight.Mqtt;
using Nightlight.Protocol;
using Nightlight.Server.Commands;
using Nightlight.Server.Ingest;
using Nightlight.Server.Rules;
using Nightlight.Server.Storage;

namespace Nightlight.Server.Pipeline;

/// <summary>
/// A parsed reading's way through the server: registry → store → rules → command, through a bounded queue to one
/// consumer (or decided at once on the receive loop when nothing is queued). A full queue slows the ingest down.
/// </summary>
public sealed class ReadingPipeline
{
    readonly ServerOptions _options;
    readonly ILogger<ReadingPipeline> _logger;
    readonly ServerMetrics _metrics;
    readonly ILessonLog _output;
    readonly Channel<Arrival> _readings;
    readonly RuleBook _rules;
    readonly DeviceRegistry _devices;
    readonly TelemetryStoreWriter _store;
    readonly CommandSender _commands;
    readonly IBrokerLink _link;
    // Held while readings are decided on, by the consumer or by the receive loop (OfferAsync): one at a time, so
    // they share one list of decisions.
    readonly SemaphoreSlim _deciding = new(1, 1);
    readonly List<RuleDecision> _decisions = [];
    // With a group feed, group sensors' readings from the shared subscription are stored but not decided on: their
    // feed copy decides, so a group's state is built from all of its sensors.
    readonly bool _groupsFromFeed;
    CancellationToken _stoppingToken;
    Task? _consumer;
    volatile bool _stopping;

    /// <summary>
    /// A reading as it arrived. <see cref="FromGroupFeed"/>: a copy received only to keep group rules whole. <see cref="Done"/>:
    /// run once the reading is stored (or, from the group feed, decided on), for ingest paths that acknowledge.
    /// </summary>
    readonly record struct Arrival(TelemetryMessage Message, DateTimeOffset Arrived, bool FromGroupFeed, Action? Done = null);

    public ReadingPipeline(IOptions<ServerOptions> options, IOptions<RulesOptions> rules, ILogger<ReadingPipeline> logger, ServerMetrics metrics,
        ILessonLog output, DeviceRegistry devices, TelemetryStoreWriter store, CommandSender commands, ServerLink link)
    {
        _options = options.Value;
        _logger = logger;
        _metrics = metrics;
        _output = _options.Quiet ? ILessonLog.None : output;
        _rules = new RuleBook(rules.Value, _options.Threshold);
        _groupsFromFeed = (link.Shared || _options.IngestsFromAmqp) && _rules.Groups.Count > 0;
        _devices = devices;
        _store = store;
        _commands = commands;
        _link = link.Link;
        _readings = Channel.CreateBounded<Arrival>(new BoundedChannelOptions(_options.QueueCapacity)
        {
            SingleReader = true,
            FullMode = BoundedChannelFullMode.Wait,
        });
    }

    /// <summary>The default rule, as the start-up line says it.</summary>
    public string RuleDescription => _rules.DescribeDefault();

    /// <summary>True when group rules are configured.</summary>
    public bool HasGroups => _rules.Groups.Count > 0;

    /// <summary>The devices whose readings group rules need (for ingest paths that route them, see Ingest/AmqpIngest).</summary>
    public IEnumerable<string> GroupSensors => _rules.GroupSensors;

    /// <summary>Starts the consumer; readings are decided on until <see cref="CompleteAsync"/>.</summary>
    public void Start(CancellationToken stoppingToken)
    {
        _stoppingToken = stoppingToken;
        _consumer = Task.Run(ConsumeAsync, CancellationToken.None);
    }

    /// <summary>Takes no more readings and finishes those queued (their commands leave while the link is still open).</summary>
    public async Task CompleteAsync()
    {
        _stopping = true;
        _readings.Writer.TryComplete();
        if (_consumer is not null)
        {
            await _consumer;
        }
    }

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
    /// A reading from the broker, parsed and counted by <see cref="MqttIngest"/>. It joins the queue: waiting for room when
    /// <paramref name="mayWait"/> (an MQTT connection, which the wait slows down), otherwise counted and logged as dropped
    /// when the queue is full (the in-process link, which must not hold up the broker's receive loop). <paramref name="stored"/>
    /// runs once the reading is stored: the link's acknowledgement to the broker.
    /// </summary>
    public Task OfferAsync(TelemetryMessage reading, bool fromGroupFeed, bool mayWait, Action? stored = null)
    {
        var arrival = new Arrival(reading, DateTimeOffset.UtcNow, fromGroupFeed, stored);
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
                using var hold = _link.HoldWrites();
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
            // Waits while the store's queue is full (an outage): the ingest slows down rather than losing the reading.
            await _store.WriteAsync(_devices.Seen(reading, arrived));
            if (done is not null)
            {
                await _store.AfterWriteAsync(done);
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
                _output.Say(decision.DeviceId == reading.DeviceId ? who : $"server → {decision.DeviceId}", $"Sending message: {CommandMessage.ForSwitch(decision.Switch, decision.LedOn)}");
            }
            await _commands.SendRuleCommandAsync(decision.DeviceId, decision.LedOn, decision.Changed, _stoppingToken, decision.Switch);
        }
    }
}
