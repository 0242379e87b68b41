using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using MQTTnet.Protocol;
using Nightlight.Mqtt;
using Nightlight.Protocol;

namespace Nightlight.Device;

/// <summary>Where a reading stands in its device's numbering: its <c>seq</c> within an <c>epoch</c> (see <see cref="SequenceCounter"/>).</summary>
public readonly record struct ReadingNumber(long Seq, long Epoch);

/// <summary>Settings of a <see cref="DeviceClient"/>.</summary>
public sealed class DeviceClientOptions
{
    /// <summary>Device id: one topic level (see <see cref="Topics.IsValidDeviceId"/>). Required.</summary>
    public string Id { get; set; } = "";

    /// <summary>
    /// The device's own directory for its sequence counter, outbox and command state; null keeps everything in memory
    /// (then <c>seq</c> restarts at 1, in a new epoch, and the <see cref="OfflinePolicy.All"/> policy is not available).
    /// </summary>
    public string? DataDirectory { get; set; }

    /// <summary>How to reach the broker. The client id defaults to the lesson's <c>{id}nightlight_client</c>; the last will is set by the client.</summary>
    public MqttConnectionOptions Connection { get; set; } = new();

    /// <summary>Offline policy of the telemetry stream. Default <see cref="OfflinePolicy.Drop"/>.</summary>
    public OfflinePolicy Offline { get; set; } = OfflinePolicy.Drop;

    /// <summary>QoS of telemetry; null picks 1 for <see cref="OfflinePolicy.All"/> and the lesson's 0 otherwise.</summary>
    public MqttQualityOfServiceLevel? TelemetryQos { get; set; }

    /// <summary>Size bound and fsync policy of the outbox (<see cref="OfflinePolicy.All"/> only).</summary>
    public OutboxOptions Outbox { get; set; } = new();

    /// <summary>
    /// Publishes in flight at once while replaying the outbox; QoS 1/2 never more than the broker's Receive Maximum.
    /// Default 100 (see <see cref="TelemetryStreamOptions.ReplayWindow"/>).
    /// </summary>
    public int ReplayWindow { get; set; } = 100;

    /// <summary>True (default) to publish retained presence on <c>{id}/status</c>, with a last will that says offline.</summary>
    public bool Presence { get; set; } = true;

    /// <summary>
    /// When the device stops waiting for the server and applies its own rule (off by default). While it is on, the
    /// presence payload also says who decides: <c>{"online": true, "mode": "cloud"|"local"}</c>.
    /// </summary>
    public LocalFallbackOptions Fallback { get; set; } = new();

    /// <summary>
    /// The switches the device has (<c>led_on</c>, <c>heating_on</c>); null accepts every command. With a list, an
    /// ordered command for another switch is refused in its acknowledgement and not applied, and a presence that
    /// differs from the lesson's (<c>led_on</c> only) names them, so the server offers only those.
    /// </summary>
    public IReadOnlyList<string>? Switches { get; set; }
}

/// <summary>
/// Everything a device needs on the wire, for any kind of device: one managed connection, a telemetry stream with
/// its offline policy, <c>seq</c> and <c>ts</c> on every reading, retained presence with a last will, and commands
/// dispatched with latest-wins or ordered semantics (<see cref="CommandReceiver"/>). Owns its connection, outbox
/// and files; the device code owns its sensors and actuators.
/// </summary>
/// <example>
/// <code>
/// await using var client = new DeviceClient(new DeviceClientOptions { Id = "thermo1", DataDirectory = "data" },
///     (command, ct) => heater.SetAsync(command.HeatingOn ?? false, ct));
/// client.Start();
/// await client.SendAsync("temperature", 18.5, ct);
/// </code>
/// </example>
public sealed class DeviceClient : IAsyncDisposable
{
    readonly DeviceClientOptions _options;
    readonly ILogger _logger;
    readonly ManagedMqttConnection _connection;
    readonly SequenceCounter? _sequence;
    readonly Outbox? _outbox;
    readonly TelemetryStream _telemetry;
    readonly CommandReceiver _commands;
    readonly LocalFallback _fallback;
    readonly SemaphoreSlim _presence = new(1, 1);
    readonly CancellationTokenSource _stopping = new();
    readonly long _epoch;
    long _memorySequence;
    Task? _sender;
    Task? _fallbackWatch;

    /// <summary>
    /// Creates the client; nothing happens on the network until <see cref="Start"/>. <paramref name="apply"/> is
    /// called, one at a time and in order, with each command the device should apply.
    /// </summary>
    public DeviceClient(DeviceClientOptions options, Func<CommandMessage, CancellationToken, ValueTask> apply, ILoggerFactory? loggerFactory = null)
    {
        if (!Topics.IsValidDeviceId(options.Id))
        {
            throw new ArgumentException($"'{options.Id}' is not a valid device id: 1–{Topics.MaxDeviceIdLength} characters, no '/', '+', '#', spaces or control characters.", nameof(options));
        }
        if (options.Offline == OfflinePolicy.All && options.DataDirectory is null)
        {
            throw new ArgumentException("The 'all' offline policy keeps readings on disk: set a data directory.", nameof(options));
        }
        loggerFactory ??= NullLoggerFactory.Instance;
        _options = options;
        _logger = loggerFactory.CreateLogger<DeviceClient>();
        var connection = options.Connection;
        if (string.IsNullOrEmpty(connection.ClientId))
        {
            connection.ClientId = Topics.DeviceClientId(options.Id);
        }
        if (options.Presence)
        {
            connection.Will = new LastWill(Topics.Status(options.Id), Nightlight.Protocol.Presence.Offline());
        }
        _connection = new ManagedMqttConnection(connection, loggerFactory.CreateLogger<ManagedMqttConnection>());
        if (options.DataDirectory is { } directory)
        {
            Directory.CreateDirectory(directory);
            _sequence = new SequenceCounter(Path.Combine(directory, "telemetry.seq"), loggerFactory.CreateLogger<SequenceCounter>());
            if (options.Offline == OfflinePolicy.All)
            {
                _outbox = new Outbox(Path.Combine(directory, "outbox"), options.Outbox, loggerFactory.CreateLogger<Outbox>());
            }
        }
        // Without a data directory numbering starts at 1 in every process: a new epoch each time keeps it apart.
        _epoch = _sequence?.Epoch ?? SequenceCounter.NewEpoch();
        var qos = options.TelemetryQos ?? (options.Offline == OfflinePolicy.All ? MqttQualityOfServiceLevel.AtLeastOnce : MqttQualityOfServiceLevel.AtMostOnce);
        if (options.Offline == OfflinePolicy.All && qos == MqttQualityOfServiceLevel.AtMostOnce)
        {
            _logger.LogWarning("Device {DeviceId}: offline policy 'all' with QoS 0 loses readings in flight when the link dies silently; use QoS 1", options.Id);
        }
        _telemetry = new TelemetryStream(new TelemetryStreamOptions { Topic = Topics.Telemetry(options.Id), Offline = options.Offline, Qos = qos, ReplayWindow = options.ReplayWindow },
            _connection, _outbox, loggerFactory.CreateLogger<TelemetryStream>());
        _fallback = new LocalFallback(options.Id, options.Fallback, loggerFactory.CreateLogger<LocalFallback>());
        _fallback.Changed += mode => { _ = PublishPresenceAsync(); };
        // A command the device applies is the server speaking: it takes over from the local rule before it is applied.
        Func<CommandMessage, CancellationToken, ValueTask> applyFromServer = (command, cancellationToken) =>
        {
            _fallback.CommandReceived();
            return apply(command, cancellationToken);
        };
        _commands = new CommandReceiver(options.Id, options.DataDirectory is { } d ? Path.Combine(d, "commands.seq") : null, _connection, applyFromServer,
            loggerFactory.CreateLogger<CommandReceiver>(), options.Switches);
        _connection.MessageReceived = OnMessageAsync;
        _connection.Connected = OnConnectedAsync;
    }

    /// <summary>The device id.</summary>
    public string Id => _options.Id;

    /// <summary>The connection (for its state and counters).</summary>
    public ManagedMqttConnection Connection => _connection;

    /// <summary>The telemetry stream (for its counters).</summary>
    public TelemetryStream Telemetry => _telemetry;

    /// <summary>The command receiver (for its counters and the lesson-style <see cref="CommandReceiver.Applying"/> hook).</summary>
    public CommandReceiver Commands => _commands;

    /// <summary>True while connected.</summary>
    public bool IsConnected => _connection.IsConnected;

    /// <summary>
    /// Who decides now: <see cref="DeviceMode.Cloud"/> (the server's commands) or <see cref="DeviceMode.Local"/>
    /// (the device's own rule, after <see cref="DeviceClientOptions.Fallback"/>'s timeouts).
    /// </summary>
    public DeviceMode Mode => _fallback.Mode;

    /// <summary>The local fallback (its <see cref="LocalFallback.Changed"/> event tells the device to apply its own rule).</summary>
    public LocalFallback Fallback => _fallback;

    /// <summary>Subscribes to commands and starts connecting and sending in the background; returns at once.</summary>
    public void Start()
    {
        if (_sender is not null)
        {
            return;
        }
        _connection.SubscribeAsync(Topics.Commands(_options.Id), MqttQualityOfServiceLevel.AtLeastOnce).GetAwaiter().GetResult();
        if (_options.Offline == OfflinePolicy.All)
        {
            _connection.SubscribeAsync(Topics.Stored(_options.Id), MqttQualityOfServiceLevel.AtLeastOnce).GetAwaiter().GetResult();
        }
        if (_options.Fallback.AfterDisconnected is not null)
        {
            // The server's retained presence: a stopped or vanished server starts the fallback time as a lost broker does.
            _connection.SubscribeAsync(Topics.ServerStatus, MqttQualityOfServiceLevel.AtLeastOnce).GetAwaiter().GetResult();
        }
        _sender = Task.Run(() => _telemetry.RunAsync(_stopping.Token), CancellationToken.None);
        if (_options.Fallback.Enabled)
        {
            _fallbackWatch = Task.Run(() => WatchFallbackAsync(_stopping.Token), CancellationToken.None);
        }
        _connection.Start();
    }

    async Task WatchFallbackAsync(CancellationToken stopping)
    {
        // A tenth of the shortest timeout, between 50 ms and 1 s: the switch comes at most that late.
        var shortest = new[] { _options.Fallback.AfterDisconnected, _options.Fallback.AfterSilence }.Where(t => t is not null).Min()!.Value;
        var tick = TimeSpan.FromMilliseconds(Math.Clamp(shortest.TotalMilliseconds / 10, 50, 1000));
        try
        {
            while (!stopping.IsCancellationRequested)
            {
                _fallback.Connection(_connection.IsConnected);
                _fallback.Check();
                await Task.Delay(tick, stopping).ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException) when (stopping.IsCancellationRequested)
        {
        }
    }

    byte[] OnlinePayload()
    {
        string? mode = _options.Fallback.Enabled ? _fallback.Mode == DeviceMode.Local ? "local" : "cloud" : null;
        // A nightlight's presence stays as it was; another kind of device says which switches it has.
        if (_options.Switches is { } switches && !(switches.Count == 1 && switches[0] == CommandMessage.Led))
        {
            return Nightlight.Protocol.Presence.Online(mode, switches);
        }
        return mode is null ? Nightlight.Protocol.Presence.Online() : Nightlight.Protocol.Presence.Online(mode);
    }

    /// <summary>Publishes the current presence (serialised, so the last one published is always the current mode).</summary>
    async Task PublishPresenceAsync()
    {
        if (!_options.Presence)
        {
            return;
        }
        try
        {
            await _presence.WaitAsync(_stopping.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            return;
        }
        try
        {
            await _connection.TryPublishAsync(Topics.Status(_options.Id), OnlinePayload(), MqttQualityOfServiceLevel.AtLeastOnce,
                retain: true, _stopping.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (_stopping.IsCancellationRequested)
        {
        }
        finally
        {
            _presence.Release();
        }
    }

    /// <summary>Waits until the first connection is made.</summary>
    public Task WaitConnectedAsync(CancellationToken cancellationToken) => _connection.StartAsync(cancellationToken);

    /// <summary>
    /// Waits until no reading is kept any more (with <see cref="OfflinePolicy.All"/> and a server that acknowledges stored
    /// readings: until the store has every one), or until <paramref name="timeout"/>; returns how many are still kept.
    /// For a clean stop: what is left stays in the outbox for the next start.
    /// </summary>
    public async Task<long> WaitUntilSentAsync(TimeSpan timeout)
    {
        var deadline = Environment.TickCount64 + (long)timeout.TotalMilliseconds;
        while (_telemetry.Queued > 0 && Environment.TickCount64 < deadline)
        {
            await Task.Delay(50).ConfigureAwait(false);
        }
        return _telemetry.Queued;
    }

    /// <summary>The epoch of this client's sequence numbers (see <see cref="SequenceCounter.Epoch"/>).</summary>
    public long Epoch => _epoch;

    /// <summary>
    /// Sends one reading with one measurement, for example <c>("temperature", 18.5)</c>: the payload is
    /// <c>{"temperature": 18.5, "seq": N, "epoch": E, "ts": UNIX_MS}</c>. Returns the payload, or null when it was dropped.
    /// </summary>
    public ValueTask<byte[]?> SendAsync(string measurement, double value, CancellationToken cancellationToken) =>
        SendAsync((number, ts) => TelemetryWriter.Write(measurement, value, number.Seq, ts, number.Epoch), cancellationToken);

    /// <summary>Sends one reading built by <paramref name="write"/> from its sequence number, epoch and time.</summary>
    public async ValueTask<byte[]?> SendAsync(Func<ReadingNumber, DateTimeOffset, byte[]> write, CancellationToken cancellationToken)
    {
        var seq = _sequence?.Next() ?? Interlocked.Increment(ref _memorySequence);
        var payload = write(new ReadingNumber(seq, _epoch), DateTimeOffset.UtcNow);
        return await _telemetry.Enqueue(payload, cancellationToken).ConfigureAwait(false) ? payload : null;
    }

    /// <summary>
    /// Calls <paramref name="tick"/> now and then every <paramref name="interval"/> until <paramref name="stopping"/>
    /// fires; returns normally when stopped.
    /// </summary>
    public static async Task RunPeriodicallyAsync(TimeSpan interval, Func<CancellationToken, ValueTask> tick, CancellationToken stopping)
    {
        using var timer = new PeriodicTimer(interval);
        try
        {
            do
            {
                await tick(stopping).ConfigureAwait(false);
            }
            while (await timer.WaitForNextTickAsync(stopping).ConfigureAwait(false));
        }
        catch (OperationCanceledException) when (stopping.IsCancellationRequested)
        {
        }
    }

    async Task OnConnectedAsync(bool reconnect)
    {
        _fallback.Connection(true);
        await PublishPresenceAsync().ConfigureAwait(false);
        _telemetry.Wake();
    }

    Task OnMessageAsync(string topic, System.Buffers.ReadOnlySequence<byte> payload)
    {
        if (topic == Topics.Commands(_options.Id))
        {
            return _commands.HandleAsync(payload, _stopping.Token);
        }
        if (topic == Topics.Stored(_options.Id))
        {
            _telemetry.OnStored(payload);
        }
        else if (topic == Topics.ServerStatus)
        {
            // An empty payload clears the retained status: nothing known, so nothing changes.
            ReadOnlySpan<byte> bytes = payload.IsSingleSegment ? payload.FirstSpan : System.Buffers.BuffersExtensions.ToArray(payload);
            if (Nightlight.Protocol.Presence.TryParse(bytes, out var online))
            {
                _fallback.ServerPresence(online);
            }
            else if (!bytes.IsEmpty)
            {
                _logger.LogWarning("Device {DeviceId} ignored a server status that is not {{\"online\": true|false}}", _options.Id);
            }
        }
        return Task.CompletedTask;
    }

    /// <summary>Says offline (retained), stops sending and disconnects; the outbox keeps what was not sent.</summary>
    public async ValueTask DisposeAsync()
    {
        if (_options.Presence && _connection.IsConnected)
        {
            // A clean disconnect does not fire the last will, so say it ourselves.
            await _connection.TryPublishAsync(Topics.Status(_options.Id), Nightlight.Protocol.Presence.Offline(), MqttQualityOfServiceLevel.AtLeastOnce,
                retain: true).ConfigureAwait(false);
        }
        await _stopping.CancelAsync().ConfigureAwait(false);
        if (_sender is not null)
        {
            await _sender.ConfigureAwait(false);
        }
        if (_fallbackWatch is not null)
        {
            await _fallbackWatch.ConfigureAwait(false);
        }
        await _connection.DisposeAsync().ConfigureAwait(false);
        _outbox?.Dispose();
        _sequence?.Dispose();
        _stopping.Dispose();
    }
}
