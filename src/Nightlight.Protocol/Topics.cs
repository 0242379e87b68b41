using System.Collections.Concurrent;

namespace Nightlight.Protocol;

/// <summary>
/// Every topic and client id of the wire contract, in one place. The lesson's devices and servers use these
/// exact strings, so they never change; new topics live under <c>{id}/</c> so one ACL rule covers a device.
/// </summary>
public static class Topics
{
    /// <summary>Suffix of the telemetry topic, device → server.</summary>
    public const string TelemetryLevel = "telemetry";

    /// <summary>Suffix of the command topic, server → device.</summary>
    public const string CommandsLevel = "commands";

    /// <summary>Suffix of the presence topic: retained <c>{"online": true}</c> or <c>{"online": false}</c>.</summary>
    public const string StatusLevel = "status";

    /// <summary>Suffix of the acknowledgement topic, device → sender of ordered commands.</summary>
    public const string AcksLevel = "acks";

    /// <summary>Suffix of the stored topic, server → device: how far the store has kept a device's readings.</summary>
    public const string StoredLevel = "stored";

    /// <summary>
    /// The server's retained presence, <c>{"online": true}</c>, with a last will that says <c>{"online": false}</c>:
    /// devices read it to know the server is gone. Three levels, so it can never be a device's <c>{id}/{level}</c>.
    /// </summary>
    public const string ServerStatus = "nightlight/server/status";

    /// <summary>Subscription that receives the presence of every device.</summary>
    public const string AllStatus = "+/" + StatusLevel;

    /// <summary>Subscription that receives the acknowledgements of every device.</summary>
    public const string AllAcks = "+/" + AcksLevel;

    /// <summary>Subscription that receives the telemetry of every device.</summary>
    public const string AllTelemetry = "+/" + TelemetryLevel;

    /// <summary>Longest device id accepted, in characters.</summary>
    public const int MaxDeviceIdLength = 64;

    /// <summary><c>{id}/telemetry</c>: the device publishes its readings here.</summary>
    public static string Telemetry(string deviceId) => deviceId + "/" + TelemetryLevel;

    /// <summary><c>{id}/commands</c>: the server publishes commands for the device here.</summary>
    public static string Commands(string deviceId) => deviceId + "/" + CommandsLevel;

    /// <summary><c>{id}/status</c>: the device's retained presence; its last will says offline.</summary>
    public static string Status(string deviceId) => deviceId + "/" + StatusLevel;

    /// <summary><c>{id}/acks</c>: the device acknowledges each ordered command here.</summary>
    public static string Acks(string deviceId) => deviceId + "/" + AcksLevel;

    /// <summary><c>{id}/stored</c>: the server says the highest <c>seq</c> of an epoch its store has committed.</summary>
    public static string Stored(string deviceId) => deviceId + "/" + StoredLevel;

    /// <summary>
    /// A shared subscription (MQTT 5, <c>$share/{group}/{filter}</c>): the broker hands each message to one member
    /// of the group.
    /// </summary>
    public static string Shared(string group, string filter) => "$share/" + group + "/" + filter;

    /// <summary>Splits <c>{id}/{level}</c> into its device id and last level; false unless the id is valid.</summary>
    public static bool TryParseDeviceTopic(string topic, out string deviceId, out string level)
    {
        deviceId = "";
        level = "";
        var slash = topic.IndexOf('/');
        if (slash <= 0 || topic.IndexOf('/', slash + 1) >= 0)
        {
            return false;
        }
        if (!TryDeviceId(topic.AsSpan(0, slash), out deviceId))
        {
            return false;
        }
        // The levels a server reads arrive thousands of times a second: the constant instead of a new string each time.
        var rest = topic.AsSpan(slash + 1);
        level = rest.SequenceEqual(TelemetryLevel) ? TelemetryLevel
            : rest.SequenceEqual(AcksLevel) ? AcksLevel
            : rest.SequenceEqual(StatusLevel) ? StatusLevel
            : rest.SequenceEqual(CommandsLevel) ? CommandsLevel
            : rest.ToString();
        return true;
    }

    /// <summary>The lesson's device client id: <c>{id}nightlight_client</c>.</summary>
    public static string DeviceClientId(string deviceId) => deviceId + "nightlight_client";

    /// <summary>The lesson's server client id: <c>{id}nightlight_server</c>.</summary>
    public static string ServerClientId(string deviceId) => deviceId + "nightlight_server";

    /// <summary>Device ids seen in topics, each kept as one string, up to <see cref="MaxKnownIds"/> of them.</summary>
    static readonly ConcurrentDictionary<string, string> KnownIds = new(StringComparer.Ordinal);
    static readonly ConcurrentDictionary<string, string>.AlternateLookup<ReadOnlySpan<char>> KnownIdsBySpan =
        KnownIds.GetAlternateLookup<ReadOnlySpan<char>>();
    static int _knownIdCount;

    /// <summary>Device ids kept as shared strings at most; ids beyond them (a flood of made-up ones) get new strings.</summary>
    public const int MaxKnownIds = 100_000;

    /// <summary>
    /// The device id of a topic's first level, when valid. A server reads a device's id from every message it sends,
    /// so a known id comes back as the same string each time instead of a new one per message.
    /// </summary>
    public static bool TryDeviceId(ReadOnlySpan<char> level, out string deviceId)
    {
        if (KnownIdsBySpan.TryGetValue(level, out var known))
        {
            deviceId = known;
            return true;
        }
        deviceId = "";
        var id = level.ToString();
        if (!IsValidDeviceId(id))
        {
            return false;
        }
        if (Volatile.Read(ref _knownIdCount) < MaxKnownIds && KnownIds.TryAdd(id, id))
        {
            Interlocked.Increment(ref _knownIdCount);
        }
        deviceId = id;
        return true;
    }

    /// <summary>
    /// A device id is one topic level: 1 to 64 characters, none of them <c>/</c>, <c>+</c>, <c>#</c>,
    /// <c>$</c> at the start, whitespace or a control character.
    /// </summary>
    public static bool IsValidDeviceId(string? id)
    {
        if (string.IsNullOrEmpty(id) || id.Length > MaxDeviceIdLength || id[0] == '$')
        {
            return false;
        }
        foreach (var c in id)
        {
            if (c is '/' or '+' or '#' || char.IsControl(c) || char.IsWhiteSpace(c))
            {
                return false;
            }
        }
        return true;
    }
}
