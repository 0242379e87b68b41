using System.Buffers.Binary;
using System.Text;

namespace Nightlight.Tests.Support;

/// <summary>MQTT control packet types (the high nibble of the first byte).</summary>
public enum PacketType
{
    Connect = 1,
    ConnAck = 2,
    Publish = 3,
    PubAck = 4,
    PubRec = 5,
    PubRel = 6,
    PubComp = 7,
    Subscribe = 8,
    SubAck = 9,
    Unsubscribe = 10,
    UnsubAck = 11,
    PingReq = 12,
    PingResp = 13,
    Disconnect = 14,
    Auth = 15,
}

/// <summary>MQTT 5 property identifiers (MQTT 5.0, section 2.2.2.2).</summary>
public static class Prop
{
    public const int PayloadFormat = 0x01;
    public const int MessageExpiry = 0x02;
    public const int ContentType = 0x03;
    public const int ResponseTopic = 0x08;
    public const int CorrelationData = 0x09;
    public const int SubscriptionId = 0x0B;
    public const int SessionExpiry = 0x11;
    public const int AssignedClientId = 0x12;
    public const int ServerKeepAlive = 0x13;
    public const int RequestProblemInformation = 0x17;
    public const int WillDelay = 0x18;
    public const int ReasonString = 0x1F;
    public const int ReceiveMaximum = 0x21;
    public const int TopicAliasMaximum = 0x22;
    public const int TopicAlias = 0x23;
    public const int MaximumQos = 0x24;
    public const int RetainAvailable = 0x25;
    public const int UserProperty = 0x26;
    public const int MaximumPacketSize = 0x27;
    public const int SharedSubscriptionAvailable = 0x2A;

    /// <summary>How each property's value is encoded on the wire.</summary>
    public static PropKind KindOf(int id) => id switch
    {
        PayloadFormat or RequestProblemInformation or MaximumQos or RetainAvailable or 0x19 or 0x28 or 0x29 or SharedSubscriptionAvailable => PropKind.Byte,
        ServerKeepAlive or ReceiveMaximum or TopicAliasMaximum or TopicAlias => PropKind.TwoBytes,
        MessageExpiry or SessionExpiry or WillDelay or MaximumPacketSize => PropKind.FourBytes,
        SubscriptionId => PropKind.VarInt,
        ContentType or ResponseTopic or AssignedClientId or ReasonString or 0x15 or 0x1A or 0x1C => PropKind.Text,
        CorrelationData or 0x16 => PropKind.Binary,
        UserProperty => PropKind.Pair,
        _ => PropKind.Unknown,
    };
}

public enum PropKind { Byte, TwoBytes, FourBytes, VarInt, Text, Binary, Pair, Unknown }

/// <summary>One MQTT 5 property as it came off the wire: a number, a text, binary data or a user property's pair.</summary>
public sealed record Property(int Id, long Number = 0, string? Text = null, byte[]? Binary = null, string? PairValue = null)
{
    public override string ToString() => Prop.KindOf(Id) switch
    {
        PropKind.Text => $"0x{Id:X2}='{Text}'",
        PropKind.Binary => $"0x{Id:X2}={Convert.ToHexString(Binary!)}",
        PropKind.Pair => $"0x{Id:X2}=({Text},{PairValue})",
        _ => $"0x{Id:X2}={Number}",
    };
}

/// <summary>A list of MQTT 5 properties, written in the order given: <c>new Props().Add(Prop.SessionExpiry, 5)</c>.</summary>
public sealed class Props
{
    readonly List<byte> _bytes = [];

    public static Props None => new();

    public Props Add(int id, long value)
    {
        _bytes.AddRange(Wire.VarInt(id));
        switch (Prop.KindOf(id))
        {
            case PropKind.Byte:
                _bytes.Add((byte)value);
                break;
            case PropKind.TwoBytes:
                _bytes.AddRange(Wire.U16((int)value));
                break;
            case PropKind.FourBytes:
                _bytes.AddRange(Wire.U32((uint)value));
                break;
            case PropKind.VarInt:
                _bytes.AddRange(Wire.VarInt((int)value));
                break;
            default:
                throw new ArgumentException($"property 0x{id:X2} is not a number");
        }
        return this;
    }

    public Props Add(int id, string text)
    {
        _bytes.AddRange(Wire.VarInt(id));
        _bytes.AddRange(Wire.Str(text));
        return this;
    }

    public Props Add(int id, byte[] binary)
    {
        _bytes.AddRange(Wire.VarInt(id));
        _bytes.AddRange(Wire.Bin(binary));
        return this;
    }

    public Props User(string name, string value)
    {
        _bytes.AddRange(Wire.VarInt(Prop.UserProperty));
        _bytes.AddRange(Wire.Str(name));
        _bytes.AddRange(Wire.Str(value));
        return this;
    }

    /// <summary>The property section: its length as a variable byte integer, then the properties.</summary>
    public byte[] Encode() => [.. Wire.VarInt(_bytes.Count), .. _bytes];
}

/// <summary>A will message for <see cref="Wire.Connect"/>.</summary>
public sealed record Will(string Topic, byte[] Payload, int Qos = 0, bool Retain = false, Props? Properties = null);

/// <summary>
/// MQTT packets built byte by byte for one protocol version (4 = 3.1.1, 5 = 5.0), so a test controls every byte and can
/// build wrong ones too. Version 4 packets carry no property section; version 5 packets always do.
/// </summary>
public sealed class Wire(int version)
{
    public static readonly Wire V311 = new(4);
    public static readonly Wire V5 = new(5);

    public int Version { get; } = version;

    public bool IsV5 => Version == 5;

    public byte[] Connect(string clientId, bool clean = true, int keepAlive = 60, Will? will = null, string? userName = null,
        string? password = null, Props? properties = null, string protocolName = "MQTT")
    {
        var flags = (clean ? 0x02 : 0) | (userName is not null ? 0x80 : 0) | (password is not null ? 0x40 : 0);
        if (will is not null)
        {
            flags |= 0x04 | (will.Qos << 3) | (will.Retain ? 0x20 : 0);
        }
        List<byte> body = [.. Str(protocolName), (byte)Version, (byte)flags, .. U16(keepAlive)];
        if (IsV5)
        {
            body.AddRange((properties ?? Props.None).Encode());
        }
        body.AddRange(Str(clientId));
        if (will is not null)
        {
            if (IsV5)
            {
                body.AddRange((will.Properties ?? Props.None).Encode());
            }
            body.AddRange(Str(will.Topic));
            body.AddRange(Bin(will.Payload));
        }
        if (userName is not null)
        {
            body.AddRange(Str(userName));
        }
        if (password is not null)
        {
            body.AddRange(Str(password));
        }
        return Frame(0x10, [.. body]);
    }

    public byte[] Publish(string topic, string payload, int qos = 0, int packetId = 0, bool retain = false, bool dup = false, Props? properties = null) =>
        Publish(topic, Encoding.UTF8.GetBytes(payload), qos, packetId, retain, dup, properties);

    public byte[] Publish(string topic, byte[] payload, int qos = 0, int packetId = 0, bool retain = false, bool dup = false, Props? properties = null)
    {
        List<byte> body = [.. Str(topic)];
        if (qos > 0)
        {
            body.AddRange(U16(packetId));
        }
        if (IsV5)
        {
            body.AddRange((properties ?? Props.None).Encode());
        }
        body.AddRange(payload);
        return Frame((byte)(0x30 | (dup ? 0x08 : 0) | (qos << 1) | (retain ? 1 : 0)), [.. body]);
    }

    /// <summary>SUBSCRIBE with one or more filters; each option byte is the QoS, plus for 5 the other subscription options.</summary>
    public byte[] Subscribe(int packetId, params (string Filter, int Options)[] filters) => Subscribe(packetId, null, filters);

    public byte[] Subscribe(int packetId, Props? properties, params (string Filter, int Options)[] filters)
    {
        List<byte> body = [.. U16(packetId)];
        if (IsV5)
        {
            body.AddRange((properties ?? Props.None).Encode());
        }
        foreach (var (filter, options) in filters)
        {
            body.AddRange(Str(filter));
            body.Add((byte)options);
        }
        return Frame(0x82, [.. body]);
    }

    public byte[] Subscribe(int packetId, string filter, int qos) => Subscribe(packetId, (filter, qos));

    public byte[] Unsubscribe(int packetId, params string[] filters)
    {
        List<byte> body = [.. U16(packetId)];
        if (IsV5)
        {
            body.AddRange(Props.None.Encode());
        }
        foreach (var filter in filters)
        {
            body.AddRange(Str(filter));
        }
        return Frame(0xA2, [.. body]);
    }

    public byte[] PubAck(int packetId) => Ack(0x40, packetId);

    public byte[] PubRec(int packetId) => Ack(0x50, packetId);

    public byte[] PubRel(int packetId) => Ack(0x62, packetId);

    public byte[] PubComp(int packetId) => Ack(0x70, packetId);

    // The short form (no reason code, no properties) is valid in both versions and means "success".
    static byte[] Ack(byte first, int packetId) => Frame(first, U16(packetId));

    public static byte[] PingReq => [0xC0, 0x00];

    /// <summary>DISCONNECT; for 5 with a reason code and properties (0x04 = with will message).</summary>
    public byte[] Disconnect(int reasonCode = 0, Props? properties = null) =>
        IsV5 ? Frame(0xE0, [(byte)reasonCode, .. (properties ?? Props.None).Encode()]) : [0xE0, 0x00];

    // Exact replies from a 3.1.1 broker: a 3.1.1 packet has one encoding, so a test compares bytes.
    public static byte[] ConnAck311(int returnCode, bool sessionPresent = false) => [0x20, 0x02, (byte)(sessionPresent ? 1 : 0), (byte)returnCode];

    public static byte[] SubAck311(int packetId, params int[] codes) => Frame(0x90, [.. U16(packetId), .. codes.Select(c => (byte)c)]);

    public static byte[] UnsubAck311(int packetId) => Frame(0xB0, U16(packetId));

    public static byte[] PingResp => [0xD0, 0x00];

    public static byte[] Frame(byte first, byte[] body) => [first, .. VarInt(body.Length), .. body];

    public static byte[] VarInt(int value)
    {
        var bytes = new List<byte>();
        do
        {
            var b = (byte)(value % 128);
            value /= 128;
            bytes.Add(value > 0 ? (byte)(b | 0x80) : b);
        }
        while (value > 0);
        return [.. bytes];
    }

    public static byte[] U16(int value) => [(byte)(value >> 8), (byte)value];

    public static byte[] U32(uint value) => [(byte)(value >> 24), (byte)(value >> 16), (byte)(value >> 8), (byte)value];

    public static byte[] Str(string s) => Bin(Encoding.UTF8.GetBytes(s));

    public static byte[] Bin(byte[] b) => [.. U16(b.Length), .. b];
}

/// <summary>
/// A packet the broker sent, with its fields decoded for the protocol version of the connection. Acknowledgements
/// without a reason code read as reason code 0 (success), as the spec says, so the short and the long form compare equal.
/// </summary>
public sealed class Packet
{
    public required byte[] Bytes { get; init; }

    public PacketType Type => (PacketType)(Bytes[0] >> 4);

    public int Flags => Bytes[0] & 0x0F;

    public int Qos => (Flags >> 1) & 3;

    public bool Retain => (Flags & 1) != 0;

    public bool Dup => (Flags & 8) != 0;

    public string Topic { get; private init; } = "";

    public int PacketId { get; private init; }

    public byte[] Payload { get; private init; } = [];

    public string PayloadText => Encoding.UTF8.GetString(Payload);

    /// <summary>CONNACK's return code (3.1.1) or reason code (5), or the reason code of a 5 acknowledgement or DISCONNECT.</summary>
    public int ReasonCode { get; private init; }

    public bool SessionPresent { get; private init; }

    /// <summary>SUBACK's return or reason codes, one per filter.</summary>
    public IReadOnlyList<int> Codes { get; private init; } = [];

    public IReadOnlyList<Property> Properties { get; private init; } = [];

    public Property? Find(int id) => Properties.FirstOrDefault(p => p.Id == id);

    public IEnumerable<Property> All(int id) => Properties.Where(p => p.Id == id);

    public override string ToString()
    {
        var text = Type switch
        {
            PacketType.Publish => $"PUBLISH q{Qos}{(Retain ? " r" : "")}{(Dup ? " d" : "")} id={PacketId} '{Topic}' '{PayloadText}'",
            PacketType.ConnAck => $"CONNACK sp={(SessionPresent ? 1 : 0)} rc=0x{ReasonCode:X2}",
            PacketType.SubAck => $"SUBACK id={PacketId} [{string.Join(",", Codes.Select(c => $"0x{c:X2}"))}]",
            PacketType.Disconnect => $"DISCONNECT rc=0x{ReasonCode:X2}",
            PacketType.PubAck or PacketType.PubRec or PacketType.PubRel or PacketType.PubComp or PacketType.UnsubAck =>
                $"{Type.ToString().ToUpperInvariant()} id={PacketId} rc=0x{ReasonCode:X2}",
            _ => Type.ToString().ToUpperInvariant(),
        };
        return Properties.Count == 0 ? text : $"{text} {{{string.Join(" ", Properties)}}}";
    }

    /// <summary>Decodes a whole packet (fixed header included) as sent on a connection of <paramref name="version"/>.</summary>
    public static Packet Decode(byte[] bytes, int version)
    {
        var v5 = version == 5;
        var reader = new Reader(bytes);
        reader.Byte();
        reader.VarInt();
        var type = (PacketType)(bytes[0] >> 4);
        switch (type)
        {
            case PacketType.ConnAck:
            {
                var sessionPresent = (reader.Byte() & 1) != 0;
                var code = reader.Byte();
                return new Packet { Bytes = bytes, SessionPresent = sessionPresent, ReasonCode = code, Properties = v5 && reader.More ? reader.Properties() : [] };
            }
            case PacketType.Publish:
            {
                var topic = reader.Text();
                var id = ((bytes[0] >> 1) & 3) > 0 ? reader.U16() : 0;
                var properties = v5 ? reader.Properties() : [];
                return new Packet { Bytes = bytes, Topic = topic, PacketId = id, Properties = properties, Payload = reader.Rest() };
            }
            case PacketType.PubAck or PacketType.PubRec or PacketType.PubRel or PacketType.PubComp or PacketType.UnsubAck:
            {
                var id = reader.U16();
                if (type == PacketType.UnsubAck)
                {
                    var unsubProperties = v5 ? reader.Properties() : [];
                    return new Packet { Bytes = bytes, PacketId = id, Properties = unsubProperties, Codes = reader.RestCodes() };
                }
                var code = v5 && reader.More ? reader.Byte() : 0;
                var properties = v5 && reader.More ? reader.Properties() : [];
                return new Packet { Bytes = bytes, PacketId = id, ReasonCode = code, Properties = properties };
            }
            case PacketType.SubAck:
            {
                var id = reader.U16();
                var properties = v5 ? reader.Properties() : [];
                return new Packet { Bytes = bytes, PacketId = id, Properties = properties, Codes = reader.RestCodes() };
            }
            case PacketType.Disconnect:
            {
                var code = v5 && reader.More ? reader.Byte() : 0;
                var properties = v5 && reader.More ? reader.Properties() : [];
                return new Packet { Bytes = bytes, ReasonCode = code, Properties = properties };
            }
            default:
                return new Packet { Bytes = bytes };
        }
    }

    sealed class Reader(byte[] bytes)
    {
        int _at;

        public bool More => _at < bytes.Length;

        public int Byte() => bytes[_at++];

        public int U16()
        {
            var value = BinaryPrimitives.ReadUInt16BigEndian(bytes.AsSpan(_at));
            _at += 2;
            return value;
        }

        public long U32()
        {
            var value = BinaryPrimitives.ReadUInt32BigEndian(bytes.AsSpan(_at));
            _at += 4;
            return value;
        }

        public int VarInt()
        {
            int value = 0, shift = 0;
            while (true)
            {
                var b = Byte();
                value |= (b & 0x7F) << shift;
                if ((b & 0x80) == 0)
                {
                    return value;
                }
                shift += 7;
            }
        }

        public byte[] Binary()
        {
            var length = U16();
            var value = bytes[_at..(_at + length)];
            _at += length;
            return value;
        }

        public string Text() => Encoding.UTF8.GetString(Binary());

        public byte[] Rest()
        {
            var rest = bytes[_at..];
            _at = bytes.Length;
            return rest;
        }

        public IReadOnlyList<int> RestCodes() => [.. Rest().Select(b => (int)b)];

        public IReadOnlyList<Property> Properties()
        {
            var end = VarInt() + _at;
            var list = new List<Property>();
            while (_at < end)
            {
                var id = VarInt();
                list.Add(Prop.KindOf(id) switch
                {
                    PropKind.Byte => new Property(id, Byte()),
                    PropKind.TwoBytes => new Property(id, U16()),
                    PropKind.FourBytes => new Property(id, U32()),
                    PropKind.VarInt => new Property(id, VarInt()),
                    PropKind.Text => new Property(id, Text: Text()),
                    PropKind.Binary => new Property(id, Binary: Binary()),
                    PropKind.Pair => new Property(id, Text: Text(), PairValue: Text()),
                    _ => throw new InvalidDataException($"unknown property 0x{id:X2} in {Convert.ToHexString(bytes)}"),
                });
            }
            return list;
        }
    }
}
