using Nightlight.Protocol;

namespace Nightlight.Server.Storage;

/// <summary>One stored reading: when the device took it, when the server received it, and every measurement by name.</summary>
public sealed record StoredReading(string DeviceId, DateTimeOffset Ts, DateTimeOffset Arrived, long? Seq, Measurements Measurements)
{
    /// <summary>The device's numbering <see cref="Seq"/> belongs to (see <see cref="TelemetryMessage.Epoch"/>); 0 when it sent none.</summary>
    public long Epoch { get; init; }
}

/// <summary>
/// The stored seqs of one device's epoch: the lowest, the highest and how many. <see cref="Missing"/> counts the seqs
/// between lowest and highest that are not stored: readings lost on the way. Losses before the lowest stored seq are
/// not counted, because retention removes a device's oldest readings and those were not lost.
/// </summary>
public sealed record EpochNumbering(long Epoch, long LowestSeq, long HighestSeq, long Stored)
{
    public long Missing => Math.Max(0, HighestSeq - LowestSeq + 1 - Stored);
}

/// <summary>Min, average and max of one measurement within one bucket.</summary>
public sealed record BucketStats(double Min, double Avg, double Max);

/// <summary>The readings of one time bucket, summarised per measurement.</summary>
public sealed record ReadingBucket(DateTimeOffset Start, long Count, IReadOnlyDictionary<string, BucketStats> Measurements);

/// <summary>Status of a command, in the order a command usually goes through them.</summary>
public static class CommandStatus
{
    /// <summary>Published to the broker.</summary>
    public const string Sent = "sent";

    /// <summary>The broker confirmed it (QoS 1).</summary>
    public const string Delivered = "delivered";

    /// <summary>The device confirmed it on <c>{id}/acks</c>.</summary>
    public const string Acknowledged = "acknowledged";

    /// <summary>Not acknowledged before it expired. The desired state it carried stays, and goes out again when the device is back.</summary>
    public const string Expired = "expired";

    /// <summary>A newer command for the device was sent before this one was acknowledged: latest wins, this one is not resent.</summary>
    public const string Superseded = "superseded";

    /// <summary>Could not be published, or the device said it could not apply it.</summary>
    public const string Failed = "failed";

    public static bool IsFinal(string status) => status is Acknowledged or Expired or Superseded or Failed;
}

/// <summary>
/// A command as stored and shown by the API: it sets <see cref="Switch"/> to <c>LedOn</c> (named after the lesson's
/// switch, the LED, and the value for any other switch).
/// </summary>
public sealed record CommandRecord(string Id, string DeviceId, bool LedOn, string Source, string Status,
    DateTimeOffset Created, DateTimeOffset Updated, DateTimeOffset? Expires)
{
    /// <summary>The switch the command sets: <c>led_on</c> (the lesson's) or <c>heating_on</c>.</summary>
    public string Switch { get; init; } = CommandMessage.Led;
}

/// <summary>What the server knows about one device.</summary>
public sealed record DeviceRecord(string Id, DateTimeOffset FirstSeen, DateTimeOffset LastSeen, bool? Online,
    StoredReading? LastReading, bool? LedOn)
{
    /// <summary>Who decides what the device does, from its presence: <c>cloud</c>, <c>local</c> (its fallback rule), or null when it does not say. Not stored: the retained presence brings it back.</summary>
    public string? Mode { get; init; }

    /// <summary>Desired and reported state of each switch the server has decided or heard of, by name. Kept in memory.</summary>
    public IReadOnlyList<SwitchState> Switches { get; init; } = [];
}

/// <summary>
/// One switch of one device (<c>led_on</c>, <c>heating_on</c>): what the server wants it to be, why and until when, and
/// what the device last said it is. <see cref="InSync"/> is null while either side is unknown.
/// </summary>
/// <param name="Name">The switch, as on the wire.</param>
/// <param name="Desired">The value the server wants; null before anything decided one.</param>
/// <param name="Source"><c>rule</c>, <c>manual</c> (a command by hand, which overrides the rules until <paramref name="Until"/>).</param>
/// <param name="DesiredAt">When the desired value was set.</param>
/// <param name="Until">When a manual value stops overriding the rules; null for a rule's value.</param>
/// <param name="Reported">What the device said it applied (its acknowledgement); null before it said.</param>
/// <param name="ReportedAt">When it said so.</param>
public sealed record SwitchState(string Name, bool? Desired, string? Source, DateTimeOffset? DesiredAt, DateTimeOffset? Until,
    bool? Reported, DateTimeOffset? ReportedAt)
{
    /// <summary>True when the device reported the desired value, false when it reported another, null while either is unknown.</summary>
    public bool? InSync => Desired is { } desired && Reported is { } reported ? desired == reported : null;
}

