using System.Diagnostics.Metrics;
using Microsoft.Extensions.Logging;

namespace Nightlight.Device;

/// <summary>Who decides what a device's actuator does.</summary>
public enum DeviceMode
{
    /// <summary>The server, through its commands (the lesson's way).</summary>
    Cloud,

    /// <summary>The device itself, with its own simple rule, because the server has not been heard for too long.</summary>
    Local,
}

/// <summary>
/// When a device stops waiting for its server and applies its own rule (<see cref="DeviceMode.Local"/>). Both
/// timeouts are off (null) by default: the lesson's device only does what the server says.
/// </summary>
public sealed class LocalFallbackOptions
{
    /// <summary>
    /// Time without the server before deciding locally, counted from the moment the broker connection or the server
    /// (its retained status, <c>nightlight/server/status</c>, says offline) is gone, whichever came first, and from start
    /// when the device never connected; null: never.
    /// </summary>
    public TimeSpan? AfterDisconnected { get; set; }

    /// <summary>Time connected without any command from the server before deciding locally; null: never.</summary>
    public TimeSpan? AfterSilence { get; set; }

    /// <summary>True when either timeout is set.</summary>
    public bool Enabled => AfterDisconnected is not null || AfterSilence is not null;
}

/// <summary>
/// Decides the <see cref="DeviceMode"/> of one device from its connection, the server's presence and the commands it
/// receives: local after <see cref="LocalFallbackOptions.AfterDisconnected"/> without a connection or a server, or
/// <see cref="LocalFallbackOptions.AfterSilence"/>
/// without a command, cloud again as soon as a command from the server arrives. Each switch is logged, counted
/// (meter <c>Nightlight.Device</c>, counter <c>nightlight.device.mode_switches</c>) and raised as <see cref="Changed"/>.
/// Thread-safe; owns nothing.
/// </summary>
public sealed class LocalFallback
{
    static readonly Meter Meter = new("Nightlight.Device");
    static readonly Counter<long> Switches = Meter.CreateCounter<long>("nightlight.device.mode_switches", description: "Switches between cloud and local decisions");

    readonly string _deviceId;
    readonly LocalFallbackOptions _options;
    readonly TimeProvider _clock;
    readonly ILogger _logger;
    readonly Lock _gate = new();
    DeviceMode _mode = DeviceMode.Cloud;
    long _offlineSince;
    long _heardSince;
    bool _connected;
    bool _serverGone;
    long _serverGoneSince;
    long _switchesToLocal;

    /// <summary>Creates the fallback for <paramref name="deviceId"/>; the device counts as offline from now.</summary>
    public LocalFallback(string deviceId, LocalFallbackOptions options, ILogger logger, TimeProvider? clock = null)
    {
        _deviceId = deviceId;
        _options = options;
        _logger = logger;
        _clock = clock ?? TimeProvider.System;
        _offlineSince = _heardSince = _clock.GetTimestamp();
    }

    /// <summary>Who decides now.</summary>
    public DeviceMode Mode
    {
        get
        {
            lock (_gate)
            {
                return _mode;
            }
        }
    }

    /// <summary>How many times the device started deciding locally.</summary>
    public long SwitchesToLocal => Interlocked.Read(ref _switchesToLocal);

    /// <summary>Raised after each switch, with the new mode; called outside any lock.</summary>
    public event Action<DeviceMode>? Changed;

    /// <summary>The connection came up (true) or went down (false).</summary>
    public void Connection(bool connected)
    {
        lock (_gate)
        {
            if (connected == _connected)
            {
                return;
            }
            _connected = connected;
            var now = _clock.GetTimestamp();
            if (connected)
            {
                _heardSince = now; // Silence is counted from the connect: a fresh server may not have spoken yet.
            }
            else
            {
                _offlineSince = now;
            }
        }
    }

    /// <summary>The server's retained presence said online (true) or offline (false, a clean stop or its last will).</summary>
    public void ServerPresence(bool online)
    {
        lock (_gate)
        {
            if (online != _serverGone)
            {
                return;
            }
            _serverGone = !online;
            if (_serverGone)
            {
                _serverGoneSince = _clock.GetTimestamp();
            }
        }
        if (!online)
        {
            _logger.LogInformation("Device {DeviceId}: the server says it is gone", _deviceId);
        }
    }

    /// <summary>A command from the server arrived: the server decides again.</summary>
    public void CommandReceived()
    {
        lock (_gate)
        {
            _heardSince = _clock.GetTimestamp();
            if (_mode == DeviceMode.Cloud)
            {
                return;
            }
            _mode = DeviceMode.Cloud;
        }
        _logger.LogWarning("Device {DeviceId}: the server's commands are back; following them again (mode cloud)", _deviceId);
        Switches.Add(1, new KeyValuePair<string, object?>("mode", "cloud"));
        Changed?.Invoke(DeviceMode.Cloud);
    }

    /// <summary>Checks the timeouts now; called periodically by the device client.</summary>
    public void Check()
    {
        string reason;
        lock (_gate)
        {
            if (_mode == DeviceMode.Local)
            {
                return;
            }
            var now = _clock.GetTimestamp();
            // Gone since the broker or the server went, whichever came first.
            var since = !_connected && _serverGone ? Math.Min(_offlineSince, _serverGoneSince) : !_connected ? _offlineSince : _serverGoneSince;
            if ((!_connected || _serverGone) && _options.AfterDisconnected is { } offline && _clock.GetElapsedTime(since, now) >= offline)
            {
                reason = _connected || (_serverGone && _serverGoneSince <= _offlineSince)
                    ? $"the server has been gone for {Durations(offline)}"
                    : $"no connection to the broker for {Durations(offline)}";
            }
            else if (_connected && _options.AfterSilence is { } silence && _clock.GetElapsedTime(_heardSince, now) >= silence)
            {
                reason = $"no command from the server for {Durations(silence)}";
            }
            else
            {
                return;
            }
            _mode = DeviceMode.Local;
        }
        Interlocked.Increment(ref _switchesToLocal);
        _logger.LogWarning("Device {DeviceId}: {Reason}; deciding locally with its own rule (mode local)", _deviceId, reason);
        Switches.Add(1, new KeyValuePair<string, object?>("mode", "local"));
        Changed?.Invoke(DeviceMode.Local);
    }

    static string Durations(TimeSpan span) =>
        span.TotalSeconds >= 1 ? FormattableString.Invariant($"{span.TotalSeconds:0.#}s") : FormattableString.Invariant($"{span.TotalMilliseconds:0}ms");
}
