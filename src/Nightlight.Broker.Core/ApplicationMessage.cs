using System.Text;
using Nightlight.Broker.Core.Packets;

namespace Nightlight.Broker.Core;

/// <summary>
/// A message as the broker routes, queues, retains and stores it: made once per PUBLISH (or will) and shared by every
/// session it goes to, never changed after it is made.
/// </summary>
public sealed class ApplicationMessage
{
    public required string Topic { get; init; }

    public ReadOnlyMemory<byte> Payload { get; init; }

    /// <summary>The QoS it was published with; each subscriber gets min(this, its subscription's maximum).</summary>
    public byte QoS { get; init; }

    /// <summary>The RETAIN flag it was published with.</summary>
    public bool Retain { get; init; }

    /// <summary>MQTT 5 properties forwarded to receivers (null: none).</summary>
    public MessageProperties? Properties { get; init; }

    /// <summary>Unix time in milliseconds after which it is not delivered (0: never). Receivers get the remaining interval.</summary>
    public long ExpiresAtUnixMs { get; init; }

    /// <summary>The client that published it (for no-local), or null for the broker's own messages.</summary>
    public string? SenderClientId { get; init; }

    byte[]? _topicUtf8;

    /// <summary>The topic's UTF-8 bytes, encoded once and shared by every PUBLISH of this message.</summary>
    internal byte[] TopicUtf8 => _topicUtf8 ??= Encoding.UTF8.GetBytes(Topic);
}
