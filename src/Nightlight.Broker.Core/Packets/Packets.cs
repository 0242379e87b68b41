namespace Nightlight.Broker.Core.Packets;

/// <summary>One MQTT 5 user property (name and value, both UTF-8 strings).</summary>
public readonly record struct UserProperty(string Name, string Value);

/// <summary>The MQTT 5 properties a PUBLISH or a will carries to its receivers; null on a packet that has none.</summary>
public sealed class MessageProperties
{
    public byte? PayloadFormatIndicator { get; set; }

    /// <summary>Seconds the message stays deliverable, as the publisher sent it.</summary>
    public uint? MessageExpiryInterval { get; set; }

    public string? ContentType { get; set; }

    public string? ResponseTopic { get; set; }

    public byte[]? CorrelationData { get; set; }

    public List<UserProperty>? UserProperties { get; set; }
}

/// <summary>A decoded control packet. The reader makes them from bytes; the writer turns them back into bytes.</summary>
public abstract class MqttPacket
{
    public abstract PacketType Type { get; }
}

public sealed class ConnectPacket : MqttPacket
{
    public override PacketType Type => PacketType.Connect;

    public MqttVersion Version { get; set; }

    /// <summary>Empty when the client sent none (the broker may assign one).</summary>
    public string ClientId { get; set; } = "";

    /// <summary>Clean session (3.1.1) or clean start (5).</summary>
    public bool CleanStart { get; set; }

    /// <summary>Seconds; 0 turns keep-alive off.</summary>
    public ushort KeepAlive { get; set; }

    public string? Username { get; set; }

    public byte[]? Password { get; set; }

    public WillMessage? Will { get; set; }

    /// <summary>Seconds the session outlives the connection (5). 3.1.1: 0 with clean session, otherwise never expires (uint.MaxValue).</summary>
    public uint SessionExpiryInterval { get; set; }

    /// <summary>QoS 1 and 2 publishes the client accepts in flight at once (5; 65,535 when absent).</summary>
    public ushort ReceiveMaximum { get; set; } = ushort.MaxValue;

    /// <summary>Largest packet the client accepts, in bytes (5; 0 when absent: no limit but the protocol's).</summary>
    public uint MaximumPacketSize { get; set; }

    /// <summary>Highest topic alias the client accepts from the broker (5; 0: none).</summary>
    public ushort TopicAliasMaximum { get; set; }

    public bool RequestResponseInformation { get; set; }

    public bool RequestProblemInformation { get; set; } = true;

    public List<UserProperty>? UserProperties { get; set; }

    public string? AuthenticationMethod { get; set; }

    public byte[]? AuthenticationData { get; set; }
}

/// <summary>The will of a CONNECT: published when the connection ends without a normal DISCONNECT.</summary>
public sealed class WillMessage
{
    public string Topic { get; set; } = "";

    public byte[] Payload { get; set; } = [];

    public byte QoS { get; set; }

    public bool Retain { get; set; }

    /// <summary>Seconds to wait after the connection ends before publishing (5).</summary>
    public uint DelayInterval { get; set; }

    public MessageProperties? Properties { get; set; }
}

public sealed class ConnAckPacket : MqttPacket
{
    public override PacketType Type => PacketType.ConnAck;

    public bool SessionPresent { get; set; }

    /// <summary>An MQTT 5 reason code; the writer maps it to a 3.1.1 return code.</summary>
    public byte ReasonCode { get; set; }

    public uint? SessionExpiryInterval { get; set; }

    public ushort? ReceiveMaximum { get; set; }

    public byte? MaximumQoS { get; set; }

    public bool? RetainAvailable { get; set; }

    public uint? MaximumPacketSize { get; set; }

    public string? AssignedClientIdentifier { get; set; }

    public ushort? TopicAliasMaximum { get; set; }

    public string? ReasonString { get; set; }

    public bool? WildcardSubscriptionAvailable { get; set; }

    public bool? SubscriptionIdentifiersAvailable { get; set; }

    public bool? SharedSubscriptionAvailable { get; set; }

    public ushort? ServerKeepAlive { get; set; }

    public string? ResponseInformation { get; set; }

    public string? ServerReference { get; set; }

    public string? AuthenticationMethod { get; set; }

    public byte[]? AuthenticationData { get; set; }

    public List<UserProperty>? UserProperties { get; set; }
}

public sealed class PublishPacket : MqttPacket
{
    public override PacketType Type => PacketType.Publish;

    /// <summary>Empty when the client sent only a topic alias; the connection resolves it before the engine sees the packet.</summary>
    public string Topic { get; set; } = "";

    /// <summary>0 for QoS 0.</summary>
    public ushort PacketId { get; set; }

    public byte QoS { get; set; }

    public bool Retain { get; set; }

    public bool Dup { get; set; }

    /// <summary>The payload; the reader copies it out of the receive buffer, so it stays valid after the read.</summary>
    public ReadOnlyMemory<byte> Payload { get; set; }

    /// <summary>Inbound topic alias (5; 0: none).</summary>
    public ushort TopicAlias { get; set; }

    public MessageProperties? Properties { get; set; }

    /// <summary>Subscription identifiers (5; only broker → client).</summary>
    public List<uint>? SubscriptionIdentifiers { get; set; }
}

/// <summary>PUBACK, PUBREC, PUBREL or PUBCOMP: the same shape, told apart by <see cref="Kind"/>.</summary>
public sealed class PublishAckPacket(PacketType kind) : MqttPacket
{
    public override PacketType Type => Kind;

    public PacketType Kind { get; } = kind is PacketType.PubAck or PacketType.PubRec or PacketType.PubRel or PacketType.PubComp
        ? kind
        : throw new ArgumentOutOfRangeException(nameof(kind));

    public ushort PacketId { get; set; }

    public byte ReasonCode { get; set; }

    public string? ReasonString { get; set; }

    public List<UserProperty>? UserProperties { get; set; }
}

/// <summary>One filter of a SUBSCRIBE with its options (the options other than QoS are MQTT 5's).</summary>
public readonly record struct TopicSubscription(string Filter, byte MaximumQoS, bool NoLocal = false, bool RetainAsPublished = false, byte RetainHandling = 0);

public sealed class SubscribePacket : MqttPacket
{
    public override PacketType Type => PacketType.Subscribe;

    public ushort PacketId { get; set; }

    public List<TopicSubscription> Subscriptions { get; set; } = [];

    /// <summary>1–268,435,455 (5; null: none).</summary>
    public uint? SubscriptionIdentifier { get; set; }

    public List<UserProperty>? UserProperties { get; set; }
}

public sealed class SubAckPacket : MqttPacket
{
    public override PacketType Type => PacketType.SubAck;

    public ushort PacketId { get; set; }

    /// <summary>One MQTT 5 reason code per filter; the writer maps failures to 0x80 for 3.1.1.</summary>
    public byte[] ReasonCodes { get; set; } = [];

    public string? ReasonString { get; set; }

    public List<UserProperty>? UserProperties { get; set; }
}

public sealed class UnsubscribePacket : MqttPacket
{
    public override PacketType Type => PacketType.Unsubscribe;

    public ushort PacketId { get; set; }

    public List<string> Filters { get; set; } = [];

    public List<UserProperty>? UserProperties { get; set; }
}

public sealed class UnsubAckPacket : MqttPacket
{
    public override PacketType Type => PacketType.UnsubAck;

    public ushort PacketId { get; set; }

    /// <summary>One reason code per filter (5 only; 3.1.1 UNSUBACK carries none).</summary>
    public byte[] ReasonCodes { get; set; } = [];

    public string? ReasonString { get; set; }

    public List<UserProperty>? UserProperties { get; set; }
}

public sealed class PingReqPacket : MqttPacket
{
    public static readonly PingReqPacket Instance = new();

    public override PacketType Type => PacketType.PingReq;
}

public sealed class PingRespPacket : MqttPacket
{
    public static readonly PingRespPacket Instance = new();

    public override PacketType Type => PacketType.PingResp;
}

public sealed class DisconnectPacket : MqttPacket
{
    public override PacketType Type => PacketType.Disconnect;

    public byte ReasonCode { get; set; }

    /// <summary>A client may change its session expiry when it disconnects (5), but not from 0 to more.</summary>
    public uint? SessionExpiryInterval { get; set; }

    public string? ReasonString { get; set; }

    public string? ServerReference { get; set; }

    public List<UserProperty>? UserProperties { get; set; }
}

public sealed class AuthPacket : MqttPacket
{
    public override PacketType Type => PacketType.Auth;

    public byte ReasonCode { get; set; }

    public string? AuthenticationMethod { get; set; }

    public byte[]? AuthenticationData { get; set; }

    public string? ReasonString { get; set; }

    public List<UserProperty>? UserProperties { get; set; }
}
