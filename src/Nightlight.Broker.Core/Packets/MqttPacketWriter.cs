using System.Buffers;
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;

namespace Nightlight.Broker.Core.Packets;

/// <summary>
/// Encodes control packets for MQTT 3.1, 3.1.1 and 5 straight into the output (a <c>PipeWriter</c>): each packet is
/// measured first, then written once, with no intermediate array. MQTT 5 reason codes become 3.1.1 return codes for
/// older clients, and what 3.1.1 cannot carry (properties, most reason codes) is left out.
/// </summary>
public static class MqttPacketWriter
{
    /// <summary>Writes <paramref name="packet"/> (CONNECT in the version it names) and returns the bytes written.</summary>
    public static int Write(IBufferWriter<byte> output, MqttVersion version, MqttPacket packet)
    {
        if (packet is PublishPacket publish)
        {
            return WritePublish(output, version, publish);
        }
        if (packet is ConnectPacket connect)
        {
            version = connect.Version;
        }
        if (packet is AuthPacket && version != MqttVersion.V500)
        {
            throw new ArgumentException("AUTH exists only in MQTT 5", nameof(packet));
        }
        var counter = Emitter.Counter();
        Body(ref counter, version, packet);
        var remaining = counter.Length;
        var total = 1 + VariableIntSize((uint)remaining) + remaining;
        var e = new Emitter(output.GetSpan(total));
        e.Byte(FirstByte(packet.Type));
        e.VariableInt((uint)remaining);
        Body(ref e, version, packet);
        output.Advance(total);
        return total;
    }

    /// <summary>The packet's bytes in a new array (tests, and packets written once).</summary>
    public static byte[] ToArray(MqttVersion version, MqttPacket packet)
    {
        var buffer = new ArrayBufferWriter<byte>();
        Write(buffer, version, packet);
        return buffer.WrittenSpan.ToArray();
    }

    /// <summary>
    /// The broker's hot path: a PUBLISH of <paramref name="message"/> to one receiver, with no allocation (the topic's
    /// UTF-8 bytes are encoded once per message). <paramref name="messageExpiryInterval"/> is the remaining interval
    /// to send (MQTT 5; null: none). Returns the bytes written, or 0 and writes nothing when the packet would be
    /// larger than <paramref name="maximumPacketSize"/> (0: no limit).
    /// </summary>
    public static int WritePublish(IBufferWriter<byte> output, MqttVersion version, ApplicationMessage message, ushort packetId, byte qos,
        bool retain, bool dup, ReadOnlySpan<uint> subscriptionIdentifiers, ushort topicAlias = 0, bool omitTopic = false,
        uint? messageExpiryInterval = null, uint maximumPacketSize = 0) =>
        WritePublish(output, version, omitTopic ? [] : message.TopicUtf8, message.Payload, message.Properties, packetId, qos, retain, dup,
            subscriptionIdentifiers, topicAlias, messageExpiryInterval, maximumPacketSize);

    static int WritePublish(IBufferWriter<byte> output, MqttVersion version, PublishPacket packet) =>
        WritePublish(output, version, Encoding.UTF8.GetBytes(packet.Topic), packet.Payload, packet.Properties, packet.PacketId, packet.QoS,
            packet.Retain, packet.Dup, CollectionsMarshal.AsSpan(packet.SubscriptionIdentifiers), packet.TopicAlias,
            packet.Properties?.MessageExpiryInterval, 0);

    static int WritePublish(IBufferWriter<byte> output, MqttVersion version, ReadOnlySpan<byte> topic, ReadOnlyMemory<byte> payload,
        MessageProperties? properties, ushort packetId, byte qos, bool retain, bool dup, ReadOnlySpan<uint> subscriptionIdentifiers,
        ushort topicAlias, uint? messageExpiryInterval, uint maximumPacketSize)
    {
        var v5 = version == MqttVersion.V500;
        var propertiesLength = 0;
        if (v5)
        {
            var counter = Emitter.Counter();
            PublishProperties(ref counter, properties, subscriptionIdentifiers, topicAlias, messageExpiryInterval);
            propertiesLength = counter.Length;
        }
        var headerRemaining = 2 + topic.Length + (qos > 0 ? 2 : 0) + (v5 ? VariableIntSize((uint)propertiesLength) + propertiesLength : 0);
        var remaining = (long)headerRemaining + payload.Length;
        var headerLength = 1 + VariableIntSize((uint)Math.Min(remaining, uint.MaxValue)) + headerRemaining;
        var total = headerLength + remaining - headerRemaining;
        if ((maximumPacketSize != 0 && total > maximumPacketSize) || remaining > MaxRemainingLength)
        {
            return 0;
        }
        var e = new Emitter(output.GetSpan(headerLength));
        e.Byte((byte)(0x30 | (dup ? 0b1000 : 0) | (qos << 1) | (retain ? 1 : 0)));
        e.VariableInt((uint)remaining);
        e.UInt16((ushort)topic.Length);
        e.Raw(topic);
        if (qos > 0)
        {
            e.UInt16(packetId);
        }
        if (v5)
        {
            e.VariableInt((uint)propertiesLength);
            PublishProperties(ref e, properties, subscriptionIdentifiers, topicAlias, messageExpiryInterval);
        }
        output.Advance(headerLength);
        if (!payload.IsEmpty)
        {
            output.Write(payload.Span);
        }
        return (int)total;
    }

    const int MaxRemainingLength = 268_435_455;

    static void PublishProperties(ref Emitter e, MessageProperties? properties, ReadOnlySpan<uint> subscriptionIdentifiers, ushort topicAlias,
        uint? messageExpiryInterval)
    {
        if (properties?.PayloadFormatIndicator is { } format)
        {
            e.Byte(0x01);
            e.Byte(format);
        }
        if (messageExpiryInterval is { } expiry)
        {
            e.Byte(0x02);
            e.UInt32(expiry);
        }
        if (topicAlias != 0)
        {
            e.Byte(0x23);
            e.UInt16(topicAlias);
        }
        if (properties is not null)
        {
            e.StringProperty(0x08, properties.ResponseTopic);
            e.BinaryProperty(0x09, properties.CorrelationData);
            e.UserProperties(properties.UserProperties);
        }
        foreach (var id in subscriptionIdentifiers)
        {
            e.Byte(0x0B);
            e.VariableInt(id);
        }
        if (properties is not null)
        {
            e.StringProperty(0x03, properties.ContentType);
        }
    }

    static byte FirstByte(PacketType type) =>
        (byte)(((int)type << 4) | (type is PacketType.PubRel or PacketType.Subscribe or PacketType.Unsubscribe ? 0b0010 : 0));

    static void Body(ref Emitter e, MqttVersion version, MqttPacket packet)
    {
        var v5 = version == MqttVersion.V500;
        switch (packet)
        {
            case ConnectPacket p:
                Connect(ref e, p);
                break;
            case ConnAckPacket p:
                e.Byte((byte)(p.SessionPresent && p.ReasonCode == ReasonCode.Success && version != MqttVersion.V310 ? 1 : 0));
                e.Byte(v5 ? p.ReasonCode : ToConnAckReturnCode(p.ReasonCode));
                if (v5)
                {
                    PropertyBlock(ref e, p);
                }
                break;
            case PublishAckPacket p:
                e.UInt16(p.PacketId);
                if (v5 && (p.ReasonCode != 0 || p.ReasonString is not null || p.UserProperties is not null))
                {
                    e.Byte(p.ReasonCode);
                    if (p.ReasonString is not null || p.UserProperties is not null)
                    {
                        PropertyBlock(ref e, p);
                    }
                }
                break;
            case SubscribePacket p:
                e.UInt16(p.PacketId);
                if (v5)
                {
                    PropertyBlock(ref e, p);
                }
                foreach (var s in p.Subscriptions)
                {
                    e.String(s.Filter);
                    var options = s.MaximumQoS & 0b11;
                    if (v5)
                    {
                        options |= (s.NoLocal ? 0b100 : 0) | (s.RetainAsPublished ? 0b1000 : 0) | ((s.RetainHandling & 0b11) << 4);
                    }
                    e.Byte((byte)options);
                }
                break;
            case SubAckPacket p:
                e.UInt16(p.PacketId);
                if (v5)
                {
                    PropertyBlock(ref e, p);
                }
                foreach (var code in p.ReasonCodes)
                {
                    e.Byte(v5 || code <= ReasonCode.GrantedQoS2 ? code : (byte)0x80);
                }
                break;
            case UnsubscribePacket p:
                e.UInt16(p.PacketId);
                if (v5)
                {
                    PropertyBlock(ref e, p);
                }
                foreach (var filter in p.Filters)
                {
                    e.String(filter);
                }
                break;
            case UnsubAckPacket p:
                e.UInt16(p.PacketId);
                if (v5)
                {
                    PropertyBlock(ref e, p);
                    foreach (var code in p.ReasonCodes)
                    {
                        e.Byte(code);
                    }
                }
                break;
            case PingReqPacket or PingRespPacket:
                break;
            case DisconnectPacket p:
                if (v5 && (p.ReasonCode != 0 || p.SessionExpiryInterval is not null || p.ReasonString is not null || p.ServerReference is not null
                    || p.UserProperties is not null))
                {
                    e.Byte(p.ReasonCode);
                    PropertyBlock(ref e, p);
                }
                break;
            case AuthPacket p:
                if (p.ReasonCode != 0 || p.AuthenticationMethod is not null || p.AuthenticationData is not null || p.ReasonString is not null
                    || p.UserProperties is not null)
                {
                    e.Byte(p.ReasonCode);
                    PropertyBlock(ref e, p);
                }
                break;
            default:
                throw new ArgumentException($"cannot write {packet.GetType().Name}", nameof(packet));
        }
    }

    static void Connect(ref Emitter e, ConnectPacket p)
    {
        var v5 = p.Version == MqttVersion.V500;
        if (p.Version == MqttVersion.V310)
        {
            e.String("MQIsdp");
        }
        else
        {
            e.String("MQTT");
        }
        e.Byte((byte)p.Version);
        var flags = (p.Username is not null ? 0x80 : 0) | (p.Password is not null ? 0x40 : 0) | (p.CleanStart ? 0x02 : 0);
        if (p.Will is { } will)
        {
            flags |= 0x04 | ((will.QoS & 0b11) << 3) | (will.Retain ? 0x20 : 0);
        }
        e.Byte((byte)flags);
        e.UInt16(p.KeepAlive);
        if (v5)
        {
            PropertyBlock(ref e, p);
        }
        e.String(p.ClientId);
        if (p.Will is { } w)
        {
            if (v5)
            {
                var counter = Emitter.Counter();
                WillProperties(ref counter, w);
                e.VariableInt((uint)counter.Length);
                WillProperties(ref e, w);
            }
            e.String(w.Topic);
            e.Binary(w.Payload);
        }
        if (p.Username is not null)
        {
            e.String(p.Username);
        }
        if (p.Password is not null)
        {
            e.Binary(p.Password);
        }
    }

    static void WillProperties(ref Emitter e, WillMessage will)
    {
        if (will.DelayInterval != 0)
        {
            e.Byte(0x18);
            e.UInt32(will.DelayInterval);
        }
        PublishProperties(ref e, will.Properties, [], 0, will.Properties?.MessageExpiryInterval);
    }

    /// <summary>The property length, then the properties: measured with a counting pass, then written.</summary>
    static void PropertyBlock(ref Emitter e, MqttPacket packet)
    {
        var counter = Emitter.Counter();
        Properties(ref counter, packet);
        e.VariableInt((uint)counter.Length);
        Properties(ref e, packet);
    }

    static void Properties(ref Emitter e, MqttPacket packet)
    {
        switch (packet)
        {
            case ConnectPacket p:
                if (p.SessionExpiryInterval != 0)
                {
                    e.Byte(0x11);
                    e.UInt32(p.SessionExpiryInterval);
                }
                if (p.ReceiveMaximum != ushort.MaxValue)
                {
                    e.Byte(0x21);
                    e.UInt16(p.ReceiveMaximum);
                }
                if (p.MaximumPacketSize != 0)
                {
                    e.Byte(0x27);
                    e.UInt32(p.MaximumPacketSize);
                }
                if (p.TopicAliasMaximum != 0)
                {
                    e.Byte(0x22);
                    e.UInt16(p.TopicAliasMaximum);
                }
                if (p.RequestResponseInformation)
                {
                    e.Byte(0x19);
                    e.Byte(1);
                }
                if (!p.RequestProblemInformation)
                {
                    e.Byte(0x17);
                    e.Byte(0);
                }
                e.StringProperty(0x15, p.AuthenticationMethod);
                e.BinaryProperty(0x16, p.AuthenticationData);
                e.UserProperties(p.UserProperties);
                break;
            case ConnAckPacket p:
                e.FourByteProperty(0x11, p.SessionExpiryInterval);
                e.TwoByteProperty(0x21, p.ReceiveMaximum);
                e.ByteProperty(0x24, p.MaximumQoS);
                e.FlagProperty(0x25, p.RetainAvailable);
                e.FourByteProperty(0x27, p.MaximumPacketSize);
                e.StringProperty(0x12, p.AssignedClientIdentifier);
                e.TwoByteProperty(0x22, p.TopicAliasMaximum);
                e.StringProperty(0x1F, p.ReasonString);
                e.FlagProperty(0x28, p.WildcardSubscriptionAvailable);
                e.FlagProperty(0x29, p.SubscriptionIdentifiersAvailable);
                e.FlagProperty(0x2A, p.SharedSubscriptionAvailable);
                e.TwoByteProperty(0x13, p.ServerKeepAlive);
                e.StringProperty(0x1A, p.ResponseInformation);
                e.StringProperty(0x1C, p.ServerReference);
                e.StringProperty(0x15, p.AuthenticationMethod);
                e.BinaryProperty(0x16, p.AuthenticationData);
                e.UserProperties(p.UserProperties);
                break;
            case PublishAckPacket p:
                e.StringProperty(0x1F, p.ReasonString);
                e.UserProperties(p.UserProperties);
                break;
            case SubscribePacket p:
                if (p.SubscriptionIdentifier is { } id)
                {
                    e.Byte(0x0B);
                    e.VariableInt(id);
                }
                e.UserProperties(p.UserProperties);
                break;
            case SubAckPacket p:
                e.StringProperty(0x1F, p.ReasonString);
                e.UserProperties(p.UserProperties);
                break;
            case UnsubscribePacket p:
                e.UserProperties(p.UserProperties);
                break;
            case UnsubAckPacket p:
                e.StringProperty(0x1F, p.ReasonString);
                e.UserProperties(p.UserProperties);
                break;
            case DisconnectPacket p:
                e.FourByteProperty(0x11, p.SessionExpiryInterval);
                e.StringProperty(0x1F, p.ReasonString);
                e.StringProperty(0x1C, p.ServerReference);
                e.UserProperties(p.UserProperties);
                break;
            case AuthPacket p:
                e.StringProperty(0x15, p.AuthenticationMethod);
                e.BinaryProperty(0x16, p.AuthenticationData);
                e.StringProperty(0x1F, p.ReasonString);
                e.UserProperties(p.UserProperties);
                break;
        }
    }

    /// <summary>CONNACK return codes of 3.1 and 3.1.1 for the core's MQTT 5 reason codes.</summary>
    public static byte ToConnAckReturnCode(byte reasonCode) => reasonCode switch
    {
        ReasonCode.Success => 0,
        ReasonCode.UnsupportedProtocolVersion => 1,
        ReasonCode.ClientIdentifierNotValid => 2,
        ReasonCode.BadUserNameOrPassword => 4,
        ReasonCode.NotAuthorized or ReasonCode.Banned => 5,
        _ => 3,
    };

    static int VariableIntSize(uint value) => value < 128 ? 1 : value < 16_384 ? 2 : value < 2_097_152 ? 3 : 4;

    /// <summary>Writes into a span, or (a counter, with no span) only adds up the lengths; both run the same code.</summary>
    ref struct Emitter(Span<byte> span)
    {
        readonly Span<byte> _span = span;
        readonly bool _counting;

        public int Length;

        public static Emitter Counter() => new(default, counting: true);

        Emitter(Span<byte> span, bool counting) : this(span) => _counting = counting;

        public void Byte(byte value)
        {
            if (!_counting)
            {
                _span[Length] = value;
            }
            Length++;
        }

        public void UInt16(ushort value)
        {
            if (!_counting)
            {
                BinaryPrimitives.WriteUInt16BigEndian(_span[Length..], value);
            }
            Length += 2;
        }

        public void UInt32(uint value)
        {
            if (!_counting)
            {
                BinaryPrimitives.WriteUInt32BigEndian(_span[Length..], value);
            }
            Length += 4;
        }

        public void VariableInt(uint value)
        {
            do
            {
                var b = (byte)(value & 0x7F);
                value >>= 7;
                Byte(value > 0 ? (byte)(b | 0x80) : b);
            }
            while (value > 0);
        }

        public void Raw(ReadOnlySpan<byte> bytes)
        {
            if (!_counting)
            {
                bytes.CopyTo(_span[Length..]);
            }
            Length += bytes.Length;
        }

        public void String(string value)
        {
            if (_counting)
            {
                Length += 2 + Encoding.UTF8.GetByteCount(value);
                return;
            }
            var written = Encoding.UTF8.GetBytes(value, _span[(Length + 2)..]);
            BinaryPrimitives.WriteUInt16BigEndian(_span[Length..], (ushort)written);
            Length += 2 + written;
        }

        public void Binary(ReadOnlySpan<byte> value)
        {
            UInt16((ushort)value.Length);
            Raw(value);
        }

        public void ByteProperty(byte id, byte? value)
        {
            if (value is { } v)
            {
                Byte(id);
                Byte(v);
            }
        }

        public void FlagProperty(byte id, bool? value) => ByteProperty(id, value is { } v ? (byte)(v ? 1 : 0) : null);

        public void TwoByteProperty(byte id, ushort? value)
        {
            if (value is { } v)
            {
                Byte(id);
                UInt16(v);
            }
        }

        public void FourByteProperty(byte id, uint? value)
        {
            if (value is { } v)
            {
                Byte(id);
                UInt32(v);
            }
        }

        public void StringProperty(byte id, string? value)
        {
            if (value is not null)
            {
                Byte(id);
                String(value);
            }
        }

        public void BinaryProperty(byte id, byte[]? value)
        {
            if (value is not null)
            {
                Byte(id);
                Binary(value);
            }
        }

        public void UserProperties(List<UserProperty>? properties)
        {
            if (properties is null)
            {
                return;
            }
            foreach (var p in properties)
            {
                Byte(0x26);
                String(p.Name);
                String(p.Value);
            }
        }
    }
}
