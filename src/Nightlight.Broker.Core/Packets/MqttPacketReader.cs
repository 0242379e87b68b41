using System.Buffers;
using System.Text;
using System.Text.Unicode;

namespace Nightlight.Broker.Core.Packets;

/// <summary>What one <see cref="MqttPacketReader.TryRead"/> found at the start of the buffer.</summary>
public enum ReadStatus
{
    /// <summary>Not a whole packet yet: read more bytes and call again. The buffer was not advanced.</summary>
    Incomplete,
    /// <summary>One packet, and the buffer was advanced past it.</summary>
    Packet,
    /// <summary>The bytes break the protocol; the error says how. The connection must close.</summary>
    Malformed,
}

/// <summary>Why bytes were refused: the MQTT 5 reason code to close with, and one line for the log.</summary>
public readonly record struct PacketError(byte ReasonCode, string Message);

/// <summary>
/// Decodes MQTT 3.1, 3.1.1 and 5 control packets in both directions, checking everything the specifications require a
/// receiver to check. One instance per connection: it remembers the last few PUBLISH topics so a device publishing to
/// the same topic costs no new string. Total on any input: it never throws for bad bytes.
/// </summary>
public sealed class MqttPacketReader(int maxTopicLength = ushort.MaxValue)
{
    const int TopicCacheSlots = 4;
    const int MaxCachedTopicBytes = 256;

    readonly int _maxTopicLength = maxTopicLength;
    byte[]?[]? _topicBytes;
    string[]? _topics;
    int _nextTopicSlot;
    PacketError _error;

    /// <summary>
    /// The version the last CONNECT read named, known as soon as its protocol name and level were read: set even when
    /// the rest of that CONNECT was malformed, so a refusal can be answered in the client's version.
    /// </summary>
    public MqttVersion? ConnectVersion { get; private set; }

    /// <summary>
    /// Reads one packet from the start of <paramref name="buffer"/> and advances it past that packet (only then).
    /// CONNECT is read in the version it names; every other packet in <paramref name="version"/>. A packet larger than
    /// <paramref name="maxPacketSize"/> (fixed header included) is refused from its fixed header, before its body arrives.
    /// </summary>
    public ReadStatus TryRead(ref ReadOnlySequence<byte> buffer, MqttVersion version, int maxPacketSize, out MqttPacket? packet, out PacketError error)
    {
        packet = null;
        error = default;
        if (!TryReadFixedHeader(buffer, out var first, out var headerLength, out var remainingLength, out error))
        {
            return error.ReasonCode == 0 ? ReadStatus.Incomplete : ReadStatus.Malformed;
        }
        var total = (long)headerLength + remainingLength;
        if (total > maxPacketSize)
        {
            error = new PacketError(ReasonCode.PacketTooLarge, $"packet of {total} bytes is larger than the maximum of {maxPacketSize}");
            return ReadStatus.Malformed;
        }
        if (buffer.Length < total)
        {
            return ReadStatus.Incomplete;
        }
        var body = buffer.Slice(headerLength, remainingLength);
        byte[]? rented = null;
        ReadOnlySpan<byte> span;
        if (body.IsSingleSegment)
        {
            span = body.FirstSpan;
        }
        else
        {
            rented = ArrayPool<byte>.Shared.Rent(remainingLength);
            body.CopyTo(rented);
            span = rented.AsSpan(0, remainingLength);
        }
        try
        {
            packet = Decode(first, span, version);
        }
        finally
        {
            if (rented is not null)
            {
                ArrayPool<byte>.Shared.Return(rented);
            }
        }
        if (packet is null)
        {
            error = _error;
            return ReadStatus.Malformed;
        }
        buffer = buffer.Slice(total);
        return ReadStatus.Packet;
    }

    /// <summary>False with a zero reason code when more bytes are needed; false with a reason code when the header is malformed.</summary>
    static bool TryReadFixedHeader(ReadOnlySequence<byte> buffer, out byte first, out int headerLength, out int remainingLength, out PacketError error)
    {
        first = 0;
        headerLength = 0;
        remainingLength = 0;
        error = default;
        Span<byte> header = stackalloc byte[5];
        var available = (int)Math.Min(buffer.Length, 5);
        if (available < 2)
        {
            return false;
        }
        buffer.Slice(0, available).CopyTo(header);
        first = header[0];
        var value = 0;
        for (var i = 1; i < 5; i++)
        {
            if (i >= available)
            {
                return false;
            }
            var b = header[i];
            value |= (b & 0x7F) << (7 * (i - 1));
            if ((b & 0x80) == 0)
            {
                headerLength = i + 1;
                remainingLength = value;
                return true;
            }
        }
        error = new PacketError(ReasonCode.MalformedPacket, "remaining length longer than four bytes");
        return false;
    }

    MqttPacket? Decode(byte first, ReadOnlySpan<byte> body, MqttVersion version)
    {
        var type = (PacketType)(first >> 4);
        var flags = first & 0x0F;
        var v5 = version == MqttVersion.V500;
        if (type == PacketType.Publish)
        {
            return ReadPublish(flags, body, v5);
        }
        var expectedFlags = type is PacketType.PubRel or PacketType.Subscribe or PacketType.Unsubscribe ? 0b0010 : 0;
        if (flags != expectedFlags)
        {
            return Fail(ReasonCode.MalformedPacket, $"{type} with fixed-header flags {flags:X1}, which must be {expectedFlags:X1}");
        }
        var cursor = new PacketCursor(body);
        return type switch
        {
            PacketType.Connect => ReadConnect(ref cursor),
            PacketType.ConnAck => ReadConnAck(ref cursor, version),
            PacketType.PubAck or PacketType.PubRec or PacketType.PubRel or PacketType.PubComp => ReadPublishAck(ref cursor, type, v5),
            PacketType.Subscribe => ReadSubscribe(ref cursor, v5),
            PacketType.SubAck => ReadSubAck(ref cursor, v5),
            PacketType.Unsubscribe => ReadUnsubscribe(ref cursor, v5),
            PacketType.UnsubAck => ReadUnsubAck(ref cursor, v5),
            PacketType.PingReq => body.IsEmpty ? PingReqPacket.Instance : Fail(ReasonCode.MalformedPacket, "PINGREQ with a body"),
            PacketType.PingResp => body.IsEmpty ? PingRespPacket.Instance : Fail(ReasonCode.MalformedPacket, "PINGRESP with a body"),
            PacketType.Disconnect => ReadDisconnect(ref cursor, v5),
            PacketType.Auth when v5 => ReadAuth(ref cursor),
            _ => Fail(ReasonCode.MalformedPacket, $"reserved packet type {(int)type}"),
        };
    }

    MqttPacket? Fail(byte reasonCode, string message)
    {
        _error = new PacketError(reasonCode, message);
        return null;
    }

    MqttPacket? Truncated(string what) => Fail(ReasonCode.MalformedPacket, $"{what} runs past the end of the packet");

    MqttPacket? Leftover(PacketType type) => Fail(ReasonCode.MalformedPacket, $"{type} with bytes left over after its last field");

    // ---- PUBLISH (the hot path) ----

    MqttPacket? ReadPublish(int flags, ReadOnlySpan<byte> body, bool v5)
    {
        var qos = (byte)((flags >> 1) & 0b11);
        var dup = (flags & 0b1000) != 0;
        if (qos == 3)
        {
            return Fail(ReasonCode.MalformedPacket, "PUBLISH with QoS 3");
        }
        if (dup && qos == 0)
        {
            return Fail(ReasonCode.MalformedPacket, "PUBLISH with DUP set on QoS 0");
        }
        var cursor = new PacketCursor(body);
        if (!cursor.TryPrefixed(out var topicBytes))
        {
            return Truncated("PUBLISH topic");
        }
        if (!TryTopic(topicBytes, out var topic))
        {
            return null;
        }
        ushort packetId = 0;
        if (qos > 0)
        {
            if (!cursor.TryUInt16(out packetId))
            {
                return Truncated("PUBLISH packet identifier");
            }
            if (packetId == 0)
            {
                return Fail(ReasonCode.MalformedPacket, "PUBLISH with QoS > 0 and packet identifier 0");
            }
        }
        var properties = default(PropertySet);
        if (v5 && !TryReadProperties(ref cursor, PropertyScope.Publish, ref properties))
        {
            return null;
        }
        if (topic.Length == 0 && (!v5 || properties.TopicAlias == 0))
        {
            return v5
                ? Fail(ReasonCode.ProtocolError, "PUBLISH with neither topic nor topic alias")
                : Fail(ReasonCode.TopicNameInvalid, "PUBLISH with an empty topic");
        }
        var payload = cursor.Rest();
        return new PublishPacket
        {
            Topic = topic,
            PacketId = packetId,
            QoS = qos,
            Retain = (flags & 1) != 0,
            Dup = dup,
            Payload = payload.IsEmpty ? ReadOnlyMemory<byte>.Empty : payload.ToArray(),
            TopicAlias = properties.TopicAlias,
            Properties = properties.ToMessageProperties(),
            SubscriptionIdentifiers = properties.SubscriptionIdentifiers,
        };
    }

    /// <summary>A topic name from the cache when its bytes match a recent one (already checked), otherwise checked and decoded.</summary>
    bool TryTopic(ReadOnlySpan<byte> bytes, out string topic)
    {
        if (_topicBytes is not null)
        {
            for (var i = 0; i < TopicCacheSlots; i++)
            {
                if (_topicBytes[i] is { } cached && bytes.SequenceEqual(cached))
                {
                    topic = _topics![i];
                    return true;
                }
            }
        }
        topic = "";
        if (bytes.IsEmpty)
        {
            return true;
        }
        if (!TryTopicName(bytes, "PUBLISH topic", out topic))
        {
            return false;
        }
        if (bytes.Length <= MaxCachedTopicBytes)
        {
            _topicBytes ??= new byte[TopicCacheSlots][];
            _topics ??= new string[TopicCacheSlots];
            _topicBytes[_nextTopicSlot] = bytes.ToArray();
            _topics[_nextTopicSlot] = topic;
            _nextTopicSlot = (_nextTopicSlot + 1) % TopicCacheSlots;
        }
        return true;
    }

    /// <summary>A non-empty topic name: well-formed UTF-8, no wildcards, not longer than the limit.</summary>
    bool TryTopicName(ReadOnlySpan<byte> bytes, string what, out string topic)
    {
        topic = "";
        if (bytes.IsEmpty)
        {
            Fail(ReasonCode.TopicNameInvalid, $"{what} is empty");
            return false;
        }
        if (bytes.Length > _maxTopicLength)
        {
            Fail(ReasonCode.TopicNameInvalid, $"{what} of {bytes.Length} bytes is longer than the limit of {_maxTopicLength}");
            return false;
        }
        if (!TryUtf8(bytes, what, out topic))
        {
            return false;
        }
        if (bytes.IndexOfAny((byte)'+', (byte)'#') >= 0)
        {
            // MQTT-3.3.2-2, a rule of the protocol rather than a name this server does not accept: ProtocolError, as Mosquitto says.
            Fail(ReasonCode.ProtocolError, $"{what} '{topic}' contains a wildcard");
            return false;
        }
        return true;
    }

    /// <summary>MQTT's UTF-8 string rules (MQTT-1.5.4): well-formed, no surrogates, no U+0000.</summary>
    bool TryUtf8(ReadOnlySpan<byte> bytes, string what, out string value)
    {
        value = "";
        if (!Utf8.IsValid(bytes))
        {
            Fail(ReasonCode.MalformedPacket, $"{what} is not well-formed UTF-8");
            return false;
        }
        if (bytes.IndexOf((byte)0) >= 0)
        {
            Fail(ReasonCode.MalformedPacket, $"{what} contains U+0000");
            return false;
        }
        value = Encoding.UTF8.GetString(bytes);
        return true;
    }

    bool TryString(ref PacketCursor cursor, string what, out string value)
    {
        value = "";
        if (!cursor.TryPrefixed(out var bytes))
        {
            Truncated(what);
            return false;
        }
        return TryUtf8(bytes, what, out value);
    }

    bool TryBinary(ref PacketCursor cursor, string what, out byte[] value)
    {
        value = [];
        if (!cursor.TryPrefixed(out var bytes))
        {
            Truncated(what);
            return false;
        }
        value = bytes.IsEmpty ? [] : bytes.ToArray();
        return true;
    }

    // ---- CONNECT and CONNACK ----

    MqttPacket? ReadConnect(ref PacketCursor cursor)
    {
        if (!cursor.TryPrefixed(out var name) || !cursor.TryByte(out var level))
        {
            return Truncated("CONNECT protocol name and level");
        }
        MqttVersion version;
        if (name.SequenceEqual("MQTT"u8))
        {
            if (level is not (4 or 5))
            {
                return Fail(ReasonCode.UnsupportedProtocolVersion, $"CONNECT for MQTT protocol level {level}");
            }
            version = (MqttVersion)level;
        }
        else if (name.SequenceEqual("MQIsdp"u8))
        {
            if (level != 3)
            {
                return Fail(ReasonCode.UnsupportedProtocolVersion, $"CONNECT for MQIsdp protocol level {level}");
            }
            version = MqttVersion.V310;
        }
        else
        {
            return Fail(ReasonCode.MalformedPacket, "CONNECT with an unknown protocol name");
        }
        ConnectVersion = version;
        var v5 = version == MqttVersion.V500;
        if (!cursor.TryByte(out var flags) || !cursor.TryUInt16(out var keepAlive))
        {
            return Truncated("CONNECT flags and keep-alive");
        }
        if ((flags & 1) != 0)
        {
            return Fail(ReasonCode.MalformedPacket, "CONNECT with the reserved flag set");
        }
        var cleanStart = (flags & 0b10) != 0;
        var willFlag = (flags & 0b100) != 0;
        var willQoS = (byte)((flags >> 3) & 0b11);
        var willRetain = (flags & 0b10_0000) != 0;
        var hasPassword = (flags & 0b100_0000) != 0;
        var hasUsername = (flags & 0b1000_0000) != 0;
        if (willQoS == 3)
        {
            return Fail(ReasonCode.MalformedPacket, "CONNECT with will QoS 3");
        }
        if (!willFlag && (willQoS != 0 || willRetain))
        {
            return Fail(ReasonCode.MalformedPacket, "CONNECT with will QoS or will retain but no will");
        }
        if (!v5 && hasPassword && !hasUsername)
        {
            return Fail(ReasonCode.MalformedPacket, "CONNECT with a password but no user name");
        }
        var properties = default(PropertySet);
        if (v5 && !TryReadProperties(ref cursor, PropertyScope.Connect, ref properties))
        {
            return null;
        }
        if (properties.AuthenticationData is not null && properties.AuthenticationMethod is null)
        {
            return Fail(ReasonCode.ProtocolError, "CONNECT with authentication data but no method");
        }
        if (!TryString(ref cursor, "CONNECT client identifier", out var clientId))
        {
            return null;
        }
        WillMessage? will = null;
        if (willFlag)
        {
            var willProperties = default(PropertySet);
            if (v5 && !TryReadProperties(ref cursor, PropertyScope.Will, ref willProperties))
            {
                return null;
            }
            if (!cursor.TryPrefixed(out var willTopicBytes))
            {
                return Truncated("CONNECT will topic");
            }
            if (!TryTopicName(willTopicBytes, "will topic", out var willTopic) || !TryBinary(ref cursor, "CONNECT will payload", out var willPayload))
            {
                return null;
            }
            will = new WillMessage
            {
                Topic = willTopic,
                Payload = willPayload,
                QoS = willQoS,
                Retain = willRetain,
                DelayInterval = willProperties.WillDelayInterval ?? 0,
                Properties = willProperties.ToMessageProperties(),
            };
        }
        string? username = null;
        byte[]? password = null;
        if (hasUsername && !TryString(ref cursor, "CONNECT user name", out username))
        {
            return null;
        }
        if (hasPassword && !TryBinary(ref cursor, "CONNECT password", out password))
        {
            return null;
        }
        if (cursor.Remaining != 0)
        {
            return Leftover(PacketType.Connect);
        }
        return new ConnectPacket
        {
            Version = version,
            ClientId = clientId,
            CleanStart = cleanStart,
            KeepAlive = keepAlive,
            Username = username,
            Password = password,
            Will = will,
            SessionExpiryInterval = v5 ? properties.SessionExpiryInterval ?? 0 : cleanStart ? 0 : uint.MaxValue,
            ReceiveMaximum = properties.ReceiveMaximum ?? ushort.MaxValue,
            MaximumPacketSize = properties.MaximumPacketSize ?? 0,
            TopicAliasMaximum = properties.TopicAliasMaximum ?? 0,
            RequestResponseInformation = properties.RequestResponseInformation == 1,
            RequestProblemInformation = properties.RequestProblemInformation != 0,
            UserProperties = properties.UserProperties,
            AuthenticationMethod = properties.AuthenticationMethod,
            AuthenticationData = properties.AuthenticationData,
        };
    }

    MqttPacket? ReadConnAck(ref PacketCursor cursor, MqttVersion version)
    {
        if (!cursor.TryByte(out var flags) || !cursor.TryByte(out var code))
        {
            return Truncated("CONNACK");
        }
        if ((flags & 0xFE) != 0)
        {
            return Fail(ReasonCode.MalformedPacket, "CONNACK with reserved acknowledge flags set");
        }
        if (version != MqttVersion.V500)
        {
            if (cursor.Remaining != 0)
            {
                return Leftover(PacketType.ConnAck);
            }
            byte? reason = code switch
            {
                0 => ReasonCode.Success,
                1 => ReasonCode.UnsupportedProtocolVersion,
                2 => ReasonCode.ClientIdentifierNotValid,
                3 => ReasonCode.ServerUnavailable,
                4 => ReasonCode.BadUserNameOrPassword,
                5 => ReasonCode.NotAuthorized,
                _ => null,
            };
            return reason is null
                ? Fail(ReasonCode.MalformedPacket, $"CONNACK with reserved return code {code}")
                : new ConnAckPacket { SessionPresent = (flags & 1) != 0, ReasonCode = reason.Value };
        }
        var p = default(PropertySet);
        if (!TryReadProperties(ref cursor, PropertyScope.ConnAck, ref p))
        {
            return null;
        }
        if (cursor.Remaining != 0)
        {
            return Leftover(PacketType.ConnAck);
        }
        return new ConnAckPacket
        {
            SessionPresent = (flags & 1) != 0,
            ReasonCode = code,
            SessionExpiryInterval = p.SessionExpiryInterval,
            ReceiveMaximum = p.ReceiveMaximum,
            MaximumQoS = p.MaximumQoS,
            RetainAvailable = p.RetainAvailable is { } r ? r == 1 : null,
            MaximumPacketSize = p.MaximumPacketSize,
            AssignedClientIdentifier = p.AssignedClientIdentifier,
            TopicAliasMaximum = p.TopicAliasMaximum,
            ReasonString = p.ReasonString,
            WildcardSubscriptionAvailable = p.WildcardSubscriptionAvailable is { } w ? w == 1 : null,
            SubscriptionIdentifiersAvailable = p.SubscriptionIdentifiersAvailable is { } s ? s == 1 : null,
            SharedSubscriptionAvailable = p.SharedSubscriptionAvailable is { } sh ? sh == 1 : null,
            ServerKeepAlive = p.ServerKeepAlive,
            ResponseInformation = p.ResponseInformation,
            ServerReference = p.ServerReference,
            AuthenticationMethod = p.AuthenticationMethod,
            AuthenticationData = p.AuthenticationData,
            UserProperties = p.UserProperties,
        };
    }

    // ---- acknowledgements ----

    MqttPacket? ReadPublishAck(ref PacketCursor cursor, PacketType type, bool v5)
    {
        if (!cursor.TryUInt16(out var packetId))
        {
            return Truncated($"{type} packet identifier");
        }
        if (packetId == 0)
        {
            return Fail(ReasonCode.MalformedPacket, $"{type} with packet identifier 0");
        }
        var packet = new PublishAckPacket(type) { PacketId = packetId };
        if (!v5 || cursor.Remaining == 0)
        {
            return cursor.Remaining == 0 ? packet : Leftover(type);
        }
        cursor.TryByte(out var code);
        if (!IsPublishAckReason(type, code))
        {
            return Fail(ReasonCode.ProtocolError, $"{type} with reason code 0x{code:X2}, which it may not carry");
        }
        packet.ReasonCode = code;
        if (cursor.Remaining == 0)
        {
            return packet;
        }
        var p = default(PropertySet);
        if (!TryReadProperties(ref cursor, PropertyScope.Ack, ref p))
        {
            return null;
        }
        if (cursor.Remaining != 0)
        {
            return Leftover(type);
        }
        packet.ReasonString = p.ReasonString;
        packet.UserProperties = p.UserProperties;
        return packet;
    }

    static bool IsPublishAckReason(PacketType type, byte code) => type is PacketType.PubRel or PacketType.PubComp
        ? code is ReasonCode.Success or ReasonCode.PacketIdentifierNotFound
        : code is ReasonCode.Success or ReasonCode.NoMatchingSubscribers or ReasonCode.UnspecifiedError or ReasonCode.ImplementationSpecificError
            or ReasonCode.NotAuthorized or ReasonCode.TopicNameInvalid or ReasonCode.PacketIdentifierInUse or ReasonCode.QuotaExceeded
            or ReasonCode.PayloadFormatInvalid;

    // ---- SUBSCRIBE, UNSUBSCRIBE and their acknowledgements ----

    MqttPacket? ReadSubscribe(ref PacketCursor cursor, bool v5)
    {
        if (!cursor.TryUInt16(out var packetId))
        {
            return Truncated("SUBSCRIBE packet identifier");
        }
        if (packetId == 0)
        {
            return Fail(ReasonCode.MalformedPacket, "SUBSCRIBE with packet identifier 0");
        }
        var p = default(PropertySet);
        if (v5 && !TryReadProperties(ref cursor, PropertyScope.Subscribe, ref p))
        {
            return null;
        }
        if (cursor.Remaining == 0)
        {
            return Fail(ReasonCode.ProtocolError, "SUBSCRIBE without a topic filter");
        }
        var subscriptions = new List<TopicSubscription>(1);
        while (cursor.Remaining > 0)
        {
            if (!cursor.TryPrefixed(out var filterBytes))
            {
                return Truncated("SUBSCRIBE topic filter");
            }
            if (!TryFilter(filterBytes, "SUBSCRIBE", out var filter, out var shared))
            {
                return null;
            }
            if (!cursor.TryByte(out var options))
            {
                return Truncated("SUBSCRIBE options");
            }
            if ((options & (v5 ? 0b1100_0000 : 0b1111_1100)) != 0)
            {
                return Fail(ReasonCode.MalformedPacket, $"SUBSCRIBE options 0x{options:X2} with reserved bits set");
            }
            var qos = (byte)(options & 0b11);
            var retainHandling = (byte)((options >> 4) & 0b11);
            var noLocal = (options & 0b100) != 0;
            if (qos == 3)
            {
                return Fail(ReasonCode.MalformedPacket, "SUBSCRIBE with maximum QoS 3");
            }
            if (retainHandling == 3)
            {
                return Fail(ReasonCode.ProtocolError, "SUBSCRIBE with retain handling 3");
            }
            if (noLocal && shared)
            {
                return Fail(ReasonCode.ProtocolError, $"SUBSCRIBE with no-local on shared subscription '{filter}'");
            }
            subscriptions.Add(new TopicSubscription(filter, qos, noLocal, (options & 0b1000) != 0, retainHandling));
        }
        return new SubscribePacket
        {
            PacketId = packetId,
            Subscriptions = subscriptions,
            SubscriptionIdentifier = p.SubscriptionIdentifiers?[0],
            UserProperties = p.UserProperties,
        };
    }

    MqttPacket? ReadUnsubscribe(ref PacketCursor cursor, bool v5)
    {
        if (!cursor.TryUInt16(out var packetId))
        {
            return Truncated("UNSUBSCRIBE packet identifier");
        }
        if (packetId == 0)
        {
            return Fail(ReasonCode.MalformedPacket, "UNSUBSCRIBE with packet identifier 0");
        }
        var p = default(PropertySet);
        if (v5 && !TryReadProperties(ref cursor, PropertyScope.Unsubscribe, ref p))
        {
            return null;
        }
        if (cursor.Remaining == 0)
        {
            return Fail(ReasonCode.ProtocolError, "UNSUBSCRIBE without a topic filter");
        }
        var filters = new List<string>(1);
        while (cursor.Remaining > 0)
        {
            if (!cursor.TryPrefixed(out var filterBytes))
            {
                return Truncated("UNSUBSCRIBE topic filter");
            }
            if (!TryFilter(filterBytes, "UNSUBSCRIBE", out var filter, out _))
            {
                return null;
            }
            filters.Add(filter);
        }
        return new UnsubscribePacket { PacketId = packetId, Filters = filters, UserProperties = p.UserProperties };
    }

    /// <summary>A topic filter: UTF-8, '#' alone in the last level, '+' alone in its level, and a well-formed <c>$share/group/filter</c>.</summary>
    bool TryFilter(ReadOnlySpan<byte> bytes, string what, out string filter, out bool shared)
    {
        filter = "";
        shared = false;
        if (bytes.IsEmpty)
        {
            Fail(ReasonCode.TopicFilterInvalid, $"{what} with an empty topic filter");
            return false;
        }
        if (bytes.Length > _maxTopicLength)
        {
            Fail(ReasonCode.TopicFilterInvalid, $"{what} topic filter of {bytes.Length} bytes is longer than the limit of {_maxTopicLength}");
            return false;
        }
        if (!TryUtf8(bytes, $"{what} topic filter", out filter))
        {
            return false;
        }
        var rest = bytes;
        if (bytes.StartsWith("$share/"u8))
        {
            shared = true;
            rest = bytes["$share/".Length..];
            var slash = rest.IndexOf((byte)'/');
            var group = slash < 0 ? rest : rest[..slash];
            if (slash <= 0 || group.IndexOfAny((byte)'+', (byte)'#') >= 0 || slash == rest.Length - 1)
            {
                Fail(ReasonCode.TopicFilterInvalid, $"{what} shared subscription '{filter}' is not $share/{{group}}/{{filter}}");
                return false;
            }
            rest = rest[(slash + 1)..];
        }
        if (!IsWellFormedFilter(rest))
        {
            Fail(ReasonCode.TopicFilterInvalid, $"{what} topic filter '{filter}' misplaces a wildcard");
            return false;
        }
        return true;
    }

    static bool IsWellFormedFilter(ReadOnlySpan<byte> filter)
    {
        var levelStart = 0;
        for (var i = 0; i <= filter.Length; i++)
        {
            if (i < filter.Length && filter[i] != '/')
            {
                continue;
            }
            var level = filter[levelStart..i];
            if (level.Length > 1 && level.IndexOfAny((byte)'+', (byte)'#') >= 0)
            {
                return false;
            }
            if (level.Length == 1 && level[0] == '#' && i != filter.Length)
            {
                return false;
            }
            levelStart = i + 1;
        }
        return true;
    }

    static readonly SearchValues<byte> SubAckReturnCodes = SearchValues.Create([0, 1, 2, 0x80]);

    MqttPacket? ReadSubAck(ref PacketCursor cursor, bool v5)
    {
        if (!cursor.TryUInt16(out var packetId))
        {
            return Truncated("SUBACK packet identifier");
        }
        if (packetId == 0)
        {
            return Fail(ReasonCode.MalformedPacket, "SUBACK with packet identifier 0");
        }
        var p = default(PropertySet);
        if (v5 && !TryReadProperties(ref cursor, PropertyScope.Ack, ref p))
        {
            return null;
        }
        var codes = cursor.Rest().ToArray();
        if (codes.Length == 0)
        {
            return Fail(ReasonCode.ProtocolError, "SUBACK without a reason code");
        }
        if (!v5 && codes.AsSpan().IndexOfAnyExcept(SubAckReturnCodes) >= 0)
        {
            return Fail(ReasonCode.MalformedPacket, "SUBACK with a reserved return code");
        }
        return new SubAckPacket { PacketId = packetId, ReasonCodes = codes, ReasonString = p.ReasonString, UserProperties = p.UserProperties };
    }

    MqttPacket? ReadUnsubAck(ref PacketCursor cursor, bool v5)
    {
        if (!cursor.TryUInt16(out var packetId))
        {
            return Truncated("UNSUBACK packet identifier");
        }
        if (packetId == 0)
        {
            return Fail(ReasonCode.MalformedPacket, "UNSUBACK with packet identifier 0");
        }
        if (!v5)
        {
            return cursor.Remaining == 0 ? new UnsubAckPacket { PacketId = packetId } : Leftover(PacketType.UnsubAck);
        }
        var p = default(PropertySet);
        if (!TryReadProperties(ref cursor, PropertyScope.Ack, ref p))
        {
            return null;
        }
        var codes = cursor.Rest().ToArray();
        if (codes.Length == 0)
        {
            return Fail(ReasonCode.ProtocolError, "UNSUBACK without a reason code");
        }
        return new UnsubAckPacket { PacketId = packetId, ReasonCodes = codes, ReasonString = p.ReasonString, UserProperties = p.UserProperties };
    }

    // ---- DISCONNECT and AUTH ----

    MqttPacket? ReadDisconnect(ref PacketCursor cursor, bool v5)
    {
        if (!v5)
        {
            return cursor.Remaining == 0 ? new DisconnectPacket() : Leftover(PacketType.Disconnect);
        }
        var packet = new DisconnectPacket();
        if (cursor.Remaining == 0)
        {
            return packet;
        }
        cursor.TryByte(out var code);
        if (!IsDisconnectReason(code))
        {
            return Fail(ReasonCode.ProtocolError, $"DISCONNECT with reason code 0x{code:X2}, which it may not carry");
        }
        packet.ReasonCode = code;
        if (cursor.Remaining == 0)
        {
            return packet;
        }
        var p = default(PropertySet);
        if (!TryReadProperties(ref cursor, PropertyScope.Disconnect, ref p))
        {
            return null;
        }
        if (cursor.Remaining != 0)
        {
            return Leftover(PacketType.Disconnect);
        }
        packet.SessionExpiryInterval = p.SessionExpiryInterval;
        packet.ReasonString = p.ReasonString;
        packet.ServerReference = p.ServerReference;
        packet.UserProperties = p.UserProperties;
        return packet;
    }

    /// <summary>The reason codes MQTT 5 table 3-10 allows on DISCONNECT, from either side.</summary>
    static bool IsDisconnectReason(byte code) => code is ReasonCode.NormalDisconnection or ReasonCode.DisconnectWithWill
        or (>= ReasonCode.UnspecifiedError and <= ReasonCode.ImplementationSpecificError)
        or ReasonCode.NotAuthorized or ReasonCode.ServerBusy or ReasonCode.ServerShuttingDown
        or (>= ReasonCode.KeepAliveTimeout and <= ReasonCode.TopicNameInvalid)
        or (>= ReasonCode.ReceiveMaximumExceeded and <= ReasonCode.WildcardSubscriptionsNotSupported);

    MqttPacket? ReadAuth(ref PacketCursor cursor)
    {
        var packet = new AuthPacket();
        if (cursor.Remaining == 0)
        {
            return packet;
        }
        cursor.TryByte(out var code);
        if (code is not (ReasonCode.Success or ReasonCode.ContinueAuthentication or ReasonCode.ReAuthenticate))
        {
            return Fail(ReasonCode.ProtocolError, $"AUTH with reason code 0x{code:X2}");
        }
        packet.ReasonCode = code;
        if (cursor.Remaining == 0)
        {
            return packet;
        }
        var p = default(PropertySet);
        if (!TryReadProperties(ref cursor, PropertyScope.Auth, ref p))
        {
            return null;
        }
        if (cursor.Remaining != 0)
        {
            return Leftover(PacketType.Auth);
        }
        packet.AuthenticationMethod = p.AuthenticationMethod;
        packet.AuthenticationData = p.AuthenticationData;
        packet.ReasonString = p.ReasonString;
        packet.UserProperties = p.UserProperties;
        return packet;
    }

    // ---- MQTT 5 properties ----

    bool TryReadProperties(ref PacketCursor cursor, PropertyScope scope, ref PropertySet set)
    {
        if (!cursor.TryVariableInt(out var length))
        {
            Truncated("property length");
            return false;
        }
        if (!cursor.TryBytes((int)length, out var bytes))
        {
            Truncated("properties");
            return false;
        }
        var properties = new PacketCursor(bytes);
        while (properties.Remaining > 0)
        {
            _error = default;
            if (!properties.TryVariableInt(out var id) || !TryReadProperty(ref properties, id, scope, ref set))
            {
                if (_error.ReasonCode == 0)
                {
                    Truncated("a property");
                }
                return false;
            }
        }
        return true;
    }

    bool TryReadProperty(ref PacketCursor c, uint id, PropertyScope scope, ref PropertySet set)
    {
        var scopes = id < (uint)PropertyScopes.Length ? PropertyScopes[(int)id] : 0;
        if (scopes == 0)
        {
            Fail(ReasonCode.MalformedPacket, $"unknown property 0x{id:X2}");
            return false;
        }
        if ((scopes & scope) == 0)
        {
            Fail(ReasonCode.MalformedPacket, $"property 0x{id:X2} is not allowed in {scope}");
            return false;
        }
        var bit = 1UL << (int)id;
        var repeatable = id == 0x26 || (id == 0x0B && scope == PropertyScope.Publish);
        if (!repeatable && (set.Seen & bit) != 0)
        {
            Fail(ReasonCode.ProtocolError, $"property 0x{id:X2} appears more than once");
            return false;
        }
        set.Seen |= bit;
        switch (id)
        {
            case 0x01: return TryFlag(ref c, id, out set.PayloadFormatIndicator);
            case 0x02: return TryFour(ref c, out set.MessageExpiryInterval);
            case 0x03: return TryOptionalString(ref c, "content type", out set.ContentType);
            case 0x08:
                if (!c.TryPrefixed(out var responseTopic))
                {
                    return false;
                }
                if (!TryTopicName(responseTopic, "response topic", out var response))
                {
                    return false;
                }
                set.ResponseTopic = response;
                return true;
            case 0x09: return TryOptionalBinary(ref c, out set.CorrelationData);
            case 0x0B:
                if (!c.TryVariableInt(out var subscriptionId))
                {
                    return false;
                }
                if (subscriptionId == 0)
                {
                    Fail(ReasonCode.ProtocolError, "subscription identifier 0");
                    return false;
                }
                (set.SubscriptionIdentifiers ??= new List<uint>(1)).Add(subscriptionId);
                return true;
            case 0x11: return TryFour(ref c, out set.SessionExpiryInterval);
            case 0x12: return TryOptionalString(ref c, "assigned client identifier", out set.AssignedClientIdentifier);
            case 0x13: return TryTwo(ref c, out set.ServerKeepAlive);
            case 0x15: return TryOptionalString(ref c, "authentication method", out set.AuthenticationMethod);
            case 0x16: return TryOptionalBinary(ref c, out set.AuthenticationData);
            case 0x17: return TryFlag(ref c, id, out set.RequestProblemInformation);
            case 0x18: return TryFour(ref c, out set.WillDelayInterval);
            case 0x19: return TryFlag(ref c, id, out set.RequestResponseInformation);
            case 0x1A: return TryOptionalString(ref c, "response information", out set.ResponseInformation);
            case 0x1C: return TryOptionalString(ref c, "server reference", out set.ServerReference);
            case 0x1F: return TryOptionalString(ref c, "reason string", out set.ReasonString);
            case 0x21: return TryNonZeroTwo(ref c, "receive maximum", out set.ReceiveMaximum);
            case 0x22: return TryTwo(ref c, out set.TopicAliasMaximum);
            case 0x23:
                if (!c.TryUInt16(out set.TopicAlias))
                {
                    return false;
                }
                if (set.TopicAlias == 0)
                {
                    Fail(ReasonCode.TopicAliasInvalid, "topic alias 0");
                    return false;
                }
                return true;
            case 0x24: return TryFlag(ref c, id, out set.MaximumQoS);
            case 0x25: return TryFlag(ref c, id, out set.RetainAvailable);
            case 0x26:
                if (!TryString(ref c, "user property name", out var name) || !TryString(ref c, "user property value", out var value))
                {
                    return false;
                }
                (set.UserProperties ??= new List<UserProperty>(1)).Add(new UserProperty(name, value));
                return true;
            case 0x27:
                if (!c.TryUInt32(out var maximumPacketSize))
                {
                    return false;
                }
                if (maximumPacketSize == 0)
                {
                    Fail(ReasonCode.ProtocolError, "maximum packet size 0");
                    return false;
                }
                set.MaximumPacketSize = maximumPacketSize;
                return true;
            case 0x28: return TryFlag(ref c, id, out set.WildcardSubscriptionAvailable);
            case 0x29: return TryFlag(ref c, id, out set.SubscriptionIdentifiersAvailable);
            case 0x2A: return TryFlag(ref c, id, out set.SharedSubscriptionAvailable);
            default:
                Fail(ReasonCode.MalformedPacket, $"unknown property 0x{id:X2}");
                return false;
        }
    }

    /// <summary>A one-byte property that may only be 0 or 1.</summary>
    bool TryFlag(ref PacketCursor c, uint id, out byte? value)
    {
        value = null;
        if (!c.TryByte(out var b))
        {
            return false;
        }
        if (b > 1)
        {
            Fail(ReasonCode.ProtocolError, $"property 0x{id:X2} with value {b}, which must be 0 or 1");
            return false;
        }
        value = b;
        return true;
    }

    static bool TryFour(ref PacketCursor c, out uint? value)
    {
        var ok = c.TryUInt32(out var v);
        value = ok ? v : null;
        return ok;
    }

    static bool TryTwo(ref PacketCursor c, out ushort? value)
    {
        var ok = c.TryUInt16(out var v);
        value = ok ? v : null;
        return ok;
    }

    bool TryNonZeroTwo(ref PacketCursor c, string what, out ushort? value)
    {
        value = null;
        if (!c.TryUInt16(out var v))
        {
            return false;
        }
        if (v == 0)
        {
            Fail(ReasonCode.ProtocolError, $"{what} 0");
            return false;
        }
        value = v;
        return true;
    }

    bool TryOptionalString(ref PacketCursor c, string what, out string? value)
    {
        var ok = TryString(ref c, what, out var s);
        value = ok ? s : null;
        return ok;
    }

    bool TryOptionalBinary(ref PacketCursor c, out byte[]? value)
    {
        var ok = TryBinary(ref c, "binary property", out var b);
        value = ok ? b : null;
        return ok;
    }

    /// <summary>Where a property may appear (MQTT 5 table 2-4).</summary>
    [Flags]
    enum PropertyScope : ushort
    {
        Connect = 1 << 0,
        ConnAck = 1 << 1,
        Publish = 1 << 2,
        Will = 1 << 3,
        Ack = 1 << 4,
        Subscribe = 1 << 5,
        Unsubscribe = 1 << 6,
        Disconnect = 1 << 7,
        Auth = 1 << 8,
        All = 0x1FF,
    }

    static readonly PropertyScope[] PropertyScopes = BuildPropertyScopes();

    static PropertyScope[] BuildPropertyScopes()
    {
        var rules = new PropertyScope[0x2B];
        const PropertyScope message = PropertyScope.Publish | PropertyScope.Will;
        rules[0x01] = message;
        rules[0x02] = message;
        rules[0x03] = message;
        rules[0x08] = message;
        rules[0x09] = message;
        rules[0x0B] = PropertyScope.Publish | PropertyScope.Subscribe;
        rules[0x11] = PropertyScope.Connect | PropertyScope.ConnAck | PropertyScope.Disconnect;
        rules[0x12] = PropertyScope.ConnAck;
        rules[0x13] = PropertyScope.ConnAck;
        rules[0x15] = PropertyScope.Connect | PropertyScope.ConnAck | PropertyScope.Auth;
        rules[0x16] = PropertyScope.Connect | PropertyScope.ConnAck | PropertyScope.Auth;
        rules[0x17] = PropertyScope.Connect;
        rules[0x18] = PropertyScope.Will;
        rules[0x19] = PropertyScope.Connect;
        rules[0x1A] = PropertyScope.ConnAck;
        rules[0x1C] = PropertyScope.ConnAck | PropertyScope.Disconnect;
        rules[0x1F] = PropertyScope.ConnAck | PropertyScope.Ack | PropertyScope.Disconnect | PropertyScope.Auth;
        rules[0x21] = PropertyScope.Connect | PropertyScope.ConnAck;
        rules[0x22] = PropertyScope.Connect | PropertyScope.ConnAck;
        rules[0x23] = PropertyScope.Publish;
        rules[0x24] = PropertyScope.ConnAck;
        rules[0x25] = PropertyScope.ConnAck;
        rules[0x26] = PropertyScope.All;
        rules[0x27] = PropertyScope.Connect | PropertyScope.ConnAck;
        rules[0x28] = PropertyScope.ConnAck;
        rules[0x29] = PropertyScope.ConnAck;
        rules[0x2A] = PropertyScope.ConnAck;
        return rules;
    }

    /// <summary>Every property one packet may carry, as read; each packet takes the ones it has.</summary>
    struct PropertySet
    {
        public ulong Seen;
        public byte? PayloadFormatIndicator;
        public uint? MessageExpiryInterval;
        public string? ContentType;
        public string? ResponseTopic;
        public byte[]? CorrelationData;
        public List<uint>? SubscriptionIdentifiers;
        public uint? SessionExpiryInterval;
        public string? AssignedClientIdentifier;
        public ushort? ServerKeepAlive;
        public string? AuthenticationMethod;
        public byte[]? AuthenticationData;
        public byte? RequestProblemInformation;
        public uint? WillDelayInterval;
        public byte? RequestResponseInformation;
        public string? ResponseInformation;
        public string? ServerReference;
        public string? ReasonString;
        public ushort? ReceiveMaximum;
        public ushort? TopicAliasMaximum;
        public ushort TopicAlias;
        public byte? MaximumQoS;
        public byte? RetainAvailable;
        public List<UserProperty>? UserProperties;
        public uint? MaximumPacketSize;
        public byte? WildcardSubscriptionAvailable;
        public byte? SubscriptionIdentifiersAvailable;
        public byte? SharedSubscriptionAvailable;

        public readonly MessageProperties? ToMessageProperties() =>
            PayloadFormatIndicator is null && MessageExpiryInterval is null && ContentType is null && ResponseTopic is null
                && CorrelationData is null && UserProperties is null
                ? null
                : new MessageProperties
                {
                    PayloadFormatIndicator = PayloadFormatIndicator,
                    MessageExpiryInterval = MessageExpiryInterval,
                    ContentType = ContentType,
                    ResponseTopic = ResponseTopic,
                    CorrelationData = CorrelationData,
                    UserProperties = UserProperties,
                };
    }
}
