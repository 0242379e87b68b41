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

    /// <summary>Not acknowledged before it expired, or replaced by a newer command first.</summary>
    public const string Expired = "expired";

    /// <summary>Could not be published, or the device said it could not apply it.</summary>
    public const string Failed = "failed";

    public static bool IsFinal(string status) => status is Acknowledged or Expired or Failed;
}

/// <summary>A command as stored and shown by the API.</summary>
public sealed record CommandRecord(string Id, string DeviceId, bool LedOn, string Source, string Status,
    DateTimeOffset Created, DateTimeOffset Updated, DateTimeOffset? Expires);

/// <summary>What the server knows about one device.</summary>
public sealed record DeviceRecord(string Id, DateTimeOffset FirstSeen, DateTimeOffset LastSeen, bool? Online,
    StoredReading? LastReading, bool? LedOn)
{
    /// <summary>Who decides what the device does, from its presence: <c>cloud</c>, <c>local</c> (its fallback rule), or null when it does not say. Not stored: the retained presence brings it back.</summary>
    public string? Mode { get; init; }
}

