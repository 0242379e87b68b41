using System.Buffers;
using System.Diagnostics;
using System.Text;
using Nightlight.Broker.Core;
using Nightlight.Broker.Core.Packets;
using static Nightlight.Tests.Broker.PacketBytes;

namespace Nightlight.Tests.Broker;

/// <summary>The broker core's packet reader and writer: round trips, exact bytes, every malformed-input rule, and a fuzz run.</summary>
public class PacketCodecTests
{
    const int Unlimited = int.MaxValue;

    static MqttPacket Read(byte[] bytes, MqttVersion version, MqttPacketReader? reader = null)
    {
        var buffer = new ReadOnlySequence<byte>(bytes);
        var status = (reader ?? new MqttPacketReader()).TryRead(ref buffer, version, Unlimited, out var packet, out var error);
        Assert.True(status == ReadStatus.Packet, $"{status}: {error.Message}");
        Assert.Equal(0, buffer.Length);
        return packet!;
    }

    static PacketError Refuse(byte[] bytes, MqttVersion version, int maxPacketSize = Unlimited, int maxTopicLength = ushort.MaxValue)
    {
        var buffer = new ReadOnlySequence<byte>(bytes);
        var status = new MqttPacketReader(maxTopicLength).TryRead(ref buffer, version, maxPacketSize, out var packet, out var error);
        Assert.Equal(ReadStatus.Malformed, status);
        Assert.Null(packet);
        Assert.Equal(bytes.Length, buffer.Length);
        Assert.False(string.IsNullOrEmpty(error.Message));
        return error;
    }

    /// <summary>Writes, reads back, writes again: the two encodings must be the same bytes.</summary>
    static T RoundTrip<T>(T packet, MqttVersion version) where T : MqttPacket
    {
        var bytes = MqttPacketWriter.ToArray(version, packet);
        var read = Read(bytes, version);
        var again = MqttPacketWriter.ToArray(version, read);
        Assert.Equal(Convert.ToHexString(bytes), Convert.ToHexString(again));
        return Assert.IsType<T>(read);
    }

    public static TheoryData<MqttVersion> Versions => [MqttVersion.V311, MqttVersion.V500];

    static List<UserProperty> UserProps() => [new("a", "1"), new("a", "2"), new("ünï", "")];

    // ---- round trips, every packet type, both versions ----

    [Theory]
    [MemberData(nameof(Versions))]
    public void Connect_round_trips_with_will_credentials_and_properties(MqttVersion version)
    {
        var v5 = version == MqttVersion.V500;
        var connect = new ConnectPacket
        {
            Version = version,
            ClientId = "dev1nightlight_client",
            CleanStart = false,
            KeepAlive = 45,
            Username = "dev1",
            Password = [1, 2, 3],
            Will = new WillMessage
            {
                Topic = "dev1/presence",
                Payload = Encoding.UTF8.GetBytes("offline"),
                QoS = 1,
                Retain = true,
                DelayInterval = v5 ? 30u : 0,
                Properties = v5 ? new MessageProperties { ContentType = "text/plain", MessageExpiryInterval = 600, UserProperties = UserProps() } : null,
            },
            SessionExpiryInterval = v5 ? 3600u : uint.MaxValue,
            ReceiveMaximum = v5 ? (ushort)20 : ushort.MaxValue,
            MaximumPacketSize = v5 ? 4096u : 0,
            TopicAliasMaximum = v5 ? (ushort)10 : (ushort)0,
            RequestResponseInformation = v5,
            RequestProblemInformation = !v5,
            UserProperties = v5 ? UserProps() : null,
            AuthenticationMethod = v5 ? "SCRAM" : null,
            AuthenticationData = v5 ? [9] : null,
        };
        var read = RoundTrip(connect, version);
        Assert.Equal(version, read.Version);
        Assert.Equal("dev1nightlight_client", read.ClientId);
        Assert.False(read.CleanStart);
        Assert.Equal(45, read.KeepAlive);
        Assert.Equal("dev1", read.Username);
        Assert.Equal([1, 2, 3], read.Password);
        Assert.Equal("dev1/presence", read.Will!.Topic);
        Assert.Equal("offline", Encoding.UTF8.GetString(read.Will.Payload));
        Assert.Equal(1, read.Will.QoS);
        Assert.True(read.Will.Retain);
        Assert.Equal(connect.SessionExpiryInterval, read.SessionExpiryInterval);
        if (v5)
        {
            Assert.Equal(30u, read.Will.DelayInterval);
            Assert.Equal("text/plain", read.Will.Properties!.ContentType);
            Assert.Equal(600u, read.Will.Properties.MessageExpiryInterval);
            Assert.Equal((ushort)20, read.ReceiveMaximum);
            Assert.Equal(4096u, read.MaximumPacketSize);
            Assert.Equal((ushort)10, read.TopicAliasMaximum);
            Assert.True(read.RequestResponseInformation);
            Assert.False(read.RequestProblemInformation);
            Assert.Equal(UserProps(), read.UserProperties);
            Assert.Equal("SCRAM", read.AuthenticationMethod);
        }
    }

    [Fact]
    public void Connect_for_mqtt_3_1_names_MQIsdp_and_is_read_whatever_the_connection_expects()
    {
        var bytes = MqttPacketWriter.ToArray(MqttVersion.V500, new ConnectPacket { Version = MqttVersion.V310, ClientId = "old", CleanStart = true });
        Assert.Equal("MQIsdp", Encoding.ASCII.GetString(bytes, 4, 6));
        var read = Assert.IsType<ConnectPacket>(Read(bytes, MqttVersion.V500));
        Assert.Equal(MqttVersion.V310, read.Version);
        Assert.Equal(0u, read.SessionExpiryInterval);
    }

    [Theory]
    [MemberData(nameof(Versions))]
    public void ConnAck_round_trips(MqttVersion version)
    {
        var v5 = version == MqttVersion.V500;
        var connack = new ConnAckPacket { SessionPresent = true, ReasonCode = ReasonCode.Success };
        if (v5)
        {
            connack.SessionExpiryInterval = 60;
            connack.ReceiveMaximum = 1000;
            connack.MaximumQoS = 1;
            connack.RetainAvailable = true;
            connack.MaximumPacketSize = 262144;
            connack.AssignedClientIdentifier = "auto-1";
            connack.TopicAliasMaximum = 64;
            connack.ReasonString = "welcome";
            connack.WildcardSubscriptionAvailable = true;
            connack.SubscriptionIdentifiersAvailable = false;
            connack.SharedSubscriptionAvailable = true;
            connack.ServerKeepAlive = 30;
            connack.ResponseInformation = "resp/";
            connack.ServerReference = "other";
            connack.UserProperties = UserProps();
        }
        var read = RoundTrip(connack, version);
        Assert.True(read.SessionPresent);
        Assert.Equal(ReasonCode.Success, read.ReasonCode);
        if (v5)
        {
            Assert.Equal((ushort)30, read.ServerKeepAlive);
            Assert.Equal("auto-1", read.AssignedClientIdentifier);
            Assert.False(read.SubscriptionIdentifiersAvailable);
            Assert.Equal((ushort)64, read.TopicAliasMaximum);
        }
    }

    [Theory]
    [MemberData(nameof(Versions))]
    public void Publish_round_trips_at_every_qos(MqttVersion version)
    {
        var v5 = version == MqttVersion.V500;
        for (byte qos = 0; qos <= 2; qos++)
        {
            var publish = new PublishPacket
            {
                Topic = "dev1/telemetry",
                QoS = qos,
                PacketId = qos > 0 ? (ushort)(1000 + qos) : (ushort)0,
                Retain = qos == 1,
                Dup = qos == 2,
                Payload = Encoding.UTF8.GetBytes("{\"light\": 412}"),
                TopicAlias = v5 ? (ushort)3 : (ushort)0,
                Properties = v5
                    ? new MessageProperties
                    {
                        PayloadFormatIndicator = 1,
                        MessageExpiryInterval = 10,
                        ContentType = "application/json",
                        ResponseTopic = "dev1/reply",
                        CorrelationData = [7, 7],
                        UserProperties = UserProps(),
                    }
                    : null,
                SubscriptionIdentifiers = v5 ? [1, 268_435_455] : null,
            };
            var read = RoundTrip(publish, version);
            Assert.Equal("dev1/telemetry", read.Topic);
            Assert.Equal(qos, read.QoS);
            Assert.Equal(publish.PacketId, read.PacketId);
            Assert.Equal(qos == 1, read.Retain);
            Assert.Equal(qos == 2, read.Dup);
            Assert.Equal("{\"light\": 412}", Encoding.UTF8.GetString(read.Payload.Span));
            if (v5)
            {
                Assert.Equal((ushort)3, read.TopicAlias);
                Assert.Equal("dev1/reply", read.Properties!.ResponseTopic);
                Assert.Equal([1u, 268_435_455u], read.SubscriptionIdentifiers);
            }
            else
            {
                Assert.Null(read.Properties);
            }
        }
    }

    [Theory]
    [MemberData(nameof(Versions))]
    public void Publish_acknowledgements_round_trip(MqttVersion version)
    {
        var v5 = version == MqttVersion.V500;
        foreach (var kind in new[] { PacketType.PubAck, PacketType.PubRec, PacketType.PubRel, PacketType.PubComp })
        {
            var plain = RoundTrip(new PublishAckPacket(kind) { PacketId = 65535 }, version);
            Assert.Equal(kind, plain.Kind);
            Assert.Equal(65535, plain.PacketId);
            var code = kind is PacketType.PubRel or PacketType.PubComp ? ReasonCode.PacketIdentifierNotFound : ReasonCode.NoMatchingSubscribers;
            var rich = RoundTrip(new PublishAckPacket(kind) { PacketId = 7, ReasonCode = code, ReasonString = v5 ? "why" : null, UserProperties = v5 ? UserProps() : null }, version);
            Assert.Equal(v5 ? code : (byte)0, rich.ReasonCode);
            Assert.Equal(v5 ? "why" : null, rich.ReasonString);
        }
    }

    [Theory]
    [MemberData(nameof(Versions))]
    public void Subscribe_and_suback_round_trip(MqttVersion version)
    {
        var v5 = version == MqttVersion.V500;
        var subscribe = new SubscribePacket
        {
            PacketId = 9,
            Subscriptions =
            [
                new("dev1/commands", 1),
                new("+/telemetry", 2, NoLocal: v5, RetainAsPublished: v5, RetainHandling: (byte)(v5 ? 2 : 0)),
                new("$share/servers/+/telemetry", 0),
                new("#", 0),
            ],
            SubscriptionIdentifier = v5 ? 42u : null,
            UserProperties = v5 ? UserProps() : null,
        };
        var read = RoundTrip(subscribe, version);
        Assert.Equal(subscribe.Subscriptions, read.Subscriptions);
        Assert.Equal(subscribe.SubscriptionIdentifier, read.SubscriptionIdentifier);

        var suback = RoundTrip(new SubAckPacket { PacketId = 9, ReasonCodes = [0, 1, 2, v5 ? ReasonCode.NotAuthorized : (byte)0x80], ReasonString = v5 ? "no" : null }, version);
        Assert.Equal(9, suback.PacketId);
        Assert.Equal([0, 1, 2, v5 ? ReasonCode.NotAuthorized : (byte)0x80], suback.ReasonCodes);
    }

    [Theory]
    [MemberData(nameof(Versions))]
    public void Unsubscribe_and_unsuback_round_trip(MqttVersion version)
    {
        var v5 = version == MqttVersion.V500;
        var read = RoundTrip(new UnsubscribePacket { PacketId = 3, Filters = ["a/+", "$share/g/b/#"], UserProperties = v5 ? UserProps() : null }, version);
        Assert.Equal(["a/+", "$share/g/b/#"], read.Filters);
        var unsuback = RoundTrip(new UnsubAckPacket { PacketId = 3, ReasonCodes = v5 ? [ReasonCode.Success, ReasonCode.NoSubscriptionExisted] : [] }, version);
        Assert.Equal(3, unsuback.PacketId);
        Assert.Equal(v5 ? [0, 0x11] : [], unsuback.ReasonCodes);
    }

    [Theory]
    [MemberData(nameof(Versions))]
    public void Pings_and_disconnect_round_trip(MqttVersion version)
    {
        var v5 = version == MqttVersion.V500;
        RoundTrip(PingReqPacket.Instance, version);
        RoundTrip(PingRespPacket.Instance, version);
        var disconnect = RoundTrip(new DisconnectPacket
        {
            ReasonCode = v5 ? ReasonCode.DisconnectWithWill : (byte)0,
            SessionExpiryInterval = v5 ? 0u : null,
            ReasonString = v5 ? "bye" : null,
            UserProperties = v5 ? UserProps() : null,
        }, version);
        Assert.Equal(v5 ? ReasonCode.DisconnectWithWill : (byte)0, disconnect.ReasonCode);
        Assert.Equal(v5 ? 0u : null, disconnect.SessionExpiryInterval);
        RoundTrip(new DisconnectPacket(), version);
    }

    [Fact]
    public void Auth_round_trips_in_mqtt_5()
    {
        var read = RoundTrip(new AuthPacket { ReasonCode = ReasonCode.ContinueAuthentication, AuthenticationMethod = "SCRAM", AuthenticationData = [1, 2] }, MqttVersion.V500);
        Assert.Equal(ReasonCode.ContinueAuthentication, read.ReasonCode);
        Assert.Equal("SCRAM", read.AuthenticationMethod);
        Assert.Equal([1, 2], read.AuthenticationData);
        RoundTrip(new AuthPacket(), MqttVersion.V500);
    }

    // ---- exact bytes ----

    [Fact]
    public void Known_packets_have_the_bytes_the_specifications_give()
    {
        Assert.Equal("C000", Encoded(MqttVersion.V311, PingReqPacket.Instance));
        Assert.Equal("D000", Encoded(MqttVersion.V500, PingRespPacket.Instance));
        Assert.Equal("E000", Encoded(MqttVersion.V311, new DisconnectPacket()));
        Assert.Equal("E000", Encoded(MqttVersion.V500, new DisconnectPacket()));
        Assert.Equal("E0028E00", Encoded(MqttVersion.V500, new DisconnectPacket { ReasonCode = ReasonCode.SessionTakenOver }));
        Assert.Equal("20020100", Encoded(MqttVersion.V311, new ConnAckPacket { SessionPresent = true }));
        Assert.Equal("2003008400", Encoded(MqttVersion.V500, new ConnAckPacket { ReasonCode = ReasonCode.UnsupportedProtocolVersion }));
        Assert.Equal("100D00044D5154540402003C000163",
            Encoded(MqttVersion.V311, new ConnectPacket { Version = MqttVersion.V311, ClientId = "c", CleanStart = true, KeepAlive = 60 }));
        Assert.Equal("3209" + "0003612F62" + "000A" + "6869",
            Encoded(MqttVersion.V311, new PublishPacket { Topic = "a/b", QoS = 1, PacketId = 10, Payload = "hi"u8.ToArray() }));
        Assert.Equal("3005000161" + "00" + "78", Encoded(MqttVersion.V500, new PublishPacket { Topic = "a", Payload = "x"u8.ToArray() }));
        Assert.Equal("82080001" + "0003612F23" + "01",
            Encoded(MqttVersion.V311, new SubscribePacket { PacketId = 1, Subscriptions = [new("a/#", 1)] }));
        Assert.Equal("40020005", Encoded(MqttVersion.V500, new PublishAckPacket(PacketType.PubAck) { PacketId = 5 }));
        Assert.Equal("4003000510", Encoded(MqttVersion.V500, new PublishAckPacket(PacketType.PubAck) { PacketId = 5, ReasonCode = ReasonCode.NoMatchingSubscribers }));
        Assert.Equal("62020005", Encoded(MqttVersion.V311, new PublishAckPacket(PacketType.PubRel) { PacketId = 5 }));
        Assert.Equal("B0020003", Encoded(MqttVersion.V311, new UnsubAckPacket { PacketId = 3, ReasonCodes = [0x11] }));

        // Remaining length 321 is C1 02 (MQTT 3.1.1 table 2.4's example).
        var publish = MqttPacketWriter.ToArray(MqttVersion.V311, new PublishPacket { Topic = "t", Payload = new byte[321 - 3] });
        Assert.Equal("30C102", Convert.ToHexString(publish, 0, 3));
        Assert.Equal(324, publish.Length);
    }

    static string Encoded(MqttVersion version, MqttPacket packet) => Convert.ToHexString(MqttPacketWriter.ToArray(version, packet));

    [Theory]
    [InlineData(ReasonCode.Success, 0)]
    [InlineData(ReasonCode.UnsupportedProtocolVersion, 1)]
    [InlineData(ReasonCode.ClientIdentifierNotValid, 2)]
    [InlineData(ReasonCode.ServerUnavailable, 3)]
    [InlineData(ReasonCode.ServerBusy, 3)]
    [InlineData(ReasonCode.UnspecifiedError, 3)]
    [InlineData(ReasonCode.BadUserNameOrPassword, 4)]
    [InlineData(ReasonCode.NotAuthorized, 5)]
    [InlineData(ReasonCode.Banned, 5)]
    public void Mqtt5_connack_reasons_become_3_1_1_return_codes(byte reason, byte returnCode)
    {
        var bytes = MqttPacketWriter.ToArray(MqttVersion.V311, new ConnAckPacket { SessionPresent = true, ReasonCode = reason });
        // A refused CONNACK never says session present (MQTT-3.2.2-4).
        Assert.Equal([0x20, 2, (byte)(reason == 0 ? 1 : 0), returnCode], bytes);
    }

    [Fact]
    public void Suback_failures_become_0x80_and_3_1_1_drops_reason_codes_and_properties()
    {
        Assert.Equal("900400010180", Encoded(MqttVersion.V311, new SubAckPacket { PacketId = 1, ReasonCodes = [1, ReasonCode.NotAuthorized], ReasonString = "x" }));
        Assert.Equal("40020001", Encoded(MqttVersion.V311, new PublishAckPacket(PacketType.PubAck) { PacketId = 1, ReasonCode = ReasonCode.NotAuthorized }));
        Assert.Equal("E000", Encoded(MqttVersion.V311, new DisconnectPacket { ReasonCode = ReasonCode.ServerShuttingDown }));
    }

    [Fact]
    public void Outgoing_publish_fast_path_writes_aliases_subscription_ids_and_remaining_expiry()
    {
        var message = new ApplicationMessage
        {
            Topic = "dev1/commands",
            Payload = "{\"led_on\": true}"u8.ToArray(),
            Properties = new MessageProperties { MessageExpiryInterval = 100, ContentType = "application/json" },
        };
        var output = new ArrayBufferWriter<byte>();
        var written = MqttPacketWriter.WritePublish(output, MqttVersion.V500, message, 12, 1, retain: false, dup: false, [5, 6],
            topicAlias: 2, omitTopic: true, messageExpiryInterval: 40);
        Assert.Equal(output.WrittenCount, written);
        var read = Assert.IsType<PublishPacket>(Read(output.WrittenSpan.ToArray(), MqttVersion.V500));
        Assert.Equal("", read.Topic);
        Assert.Equal((ushort)2, read.TopicAlias);
        Assert.Equal(40u, read.Properties!.MessageExpiryInterval);
        Assert.Equal("application/json", read.Properties.ContentType);
        Assert.Equal([5u, 6u], read.SubscriptionIdentifiers);
        Assert.Equal(12, read.PacketId);

        output.ResetWrittenCount();
        MqttPacketWriter.WritePublish(output, MqttVersion.V311, message, 0, 0, retain: true, dup: false, [5]);
        var old = Assert.IsType<PublishPacket>(Read(output.WrittenSpan.ToArray(), MqttVersion.V311));
        Assert.Equal("dev1/commands", old.Topic);
        Assert.True(old.Retain);
        Assert.Null(old.Properties);
    }

    [Fact]
    public void Outgoing_publish_larger_than_the_receivers_maximum_is_not_written()
    {
        var message = new ApplicationMessage { Topic = "t", Payload = new byte[100] };
        var output = new ArrayBufferWriter<byte>();
        // 1 + 1 + (2 + 1 + 1 properties + 100) = 106 bytes for MQTT 5.
        Assert.Equal(0, MqttPacketWriter.WritePublish(output, MqttVersion.V500, message, 0, 0, false, false, [], maximumPacketSize: 105));
        Assert.Equal(0, output.WrittenCount);
        Assert.Equal(106, MqttPacketWriter.WritePublish(output, MqttVersion.V500, message, 0, 0, false, false, [], maximumPacketSize: 106));
    }

    // ---- reading: partial input, segments, the topic cache ----

    [Fact]
    public void Partial_packets_are_incomplete_and_nothing_is_consumed()
    {
        var bytes = MqttPacketWriter.ToArray(MqttVersion.V311, new PublishPacket { Topic = "a/b", Payload = new byte[200] });
        var reader = new MqttPacketReader();
        for (var length = 0; length < bytes.Length; length++)
        {
            var buffer = new ReadOnlySequence<byte>(bytes, 0, length);
            Assert.Equal(ReadStatus.Incomplete, reader.TryRead(ref buffer, MqttVersion.V311, Unlimited, out _, out _));
            Assert.Equal(length, buffer.Length);
        }
    }

    [Fact]
    public void Packets_split_across_segments_read_the_same_and_two_in_a_row_read_one_at_a_time()
    {
        var one = MqttPacketWriter.ToArray(MqttVersion.V500, new PublishPacket { Topic = "x/y", QoS = 1, PacketId = 1, Payload = "p"u8.ToArray() });
        var two = MqttPacketWriter.ToArray(MqttVersion.V500, PingReqPacket.Instance);
        byte[] both = [.. one, .. two];
        var reader = new MqttPacketReader();
        for (var cut = 1; cut < both.Length; cut++)
        {
            var buffer = Segmented(both, 1, cut, cut + 1);
            Assert.Equal(ReadStatus.Packet, reader.TryRead(ref buffer, MqttVersion.V500, Unlimited, out var first, out _));
            Assert.Equal("x/y", Assert.IsType<PublishPacket>(first).Topic);
            Assert.Equal(two.Length, buffer.Length);
            Assert.Equal(ReadStatus.Packet, reader.TryRead(ref buffer, MqttVersion.V500, Unlimited, out var second, out _));
            Assert.Same(PingReqPacket.Instance, second);
            Assert.Equal(0, buffer.Length);
        }
    }

    [Fact]
    public void A_repeated_topic_is_the_same_string_and_the_payload_a_copy()
    {
        var bytes = MqttPacketWriter.ToArray(MqttVersion.V311, new PublishPacket { Topic = "dev1/telemetry", Payload = "{}"u8.ToArray() });
        var reader = new MqttPacketReader();
        var first = (PublishPacket)Read(bytes, MqttVersion.V311, reader);
        var second = (PublishPacket)Read(bytes, MqttVersion.V311, reader);
        Assert.Same(first.Topic, second.Topic);
        bytes[^1] = (byte)'!';
        Assert.Equal("{}", Encoding.UTF8.GetString(first.Payload.Span));
        Assert.NotSame(first.Payload.ToArray(), second.Payload.ToArray());
    }

    [Fact]
    public void Topic_cache_does_not_let_an_invalid_topic_through_after_a_valid_one()
    {
        var reader = new MqttPacketReader();
        Read(Packet(0x30, Str("a/b")), MqttVersion.V311, reader);
        var buffer = new ReadOnlySequence<byte>(Packet(0x30, Str("a/+")));
        Assert.Equal(ReadStatus.Malformed, reader.TryRead(ref buffer, MqttVersion.V311, Unlimited, out _, out var error));
        Assert.Equal(ReasonCode.ProtocolError, error.ReasonCode);
    }

    // ---- malformed input: one case per rule, each with the reason code the connection closes with ----

    static readonly MqttVersion V3 = MqttVersion.V311;
    static readonly MqttVersion V5 = MqttVersion.V500;

    static byte[] Pub5(params byte[][] properties) => Packet(0x30, Str("a"), Props(properties));

    static byte[] Sub(MqttVersion version, string filter, byte options) =>
        Packet(0x82, U16(1), version == MqttVersion.V500 ? [0] : [], Str(filter), B(options));

    public static TheoryData<string, MqttVersion, byte[], byte> MalformedCases => new()
    {
        { "PUBREL without flags 0010", V3, Hex("6002 0001"), ReasonCode.MalformedPacket },
        { "SUBSCRIBE without flags 0010", V3, Packet(0x80, U16(1), Str("a"), B(0)), ReasonCode.MalformedPacket },
        { "UNSUBSCRIBE without flags 0010", V5, Packet(0xA0, U16(1), B(0), Str("a")), ReasonCode.MalformedPacket },
        { "PINGREQ with flags", V3, Hex("C100"), ReasonCode.MalformedPacket },
        { "remaining length of five bytes", V3, Hex("30 FFFFFFFF01"), ReasonCode.MalformedPacket },
        { "PUBLISH QoS 3", V3, Packet(0x36, Str("a"), U16(1)), ReasonCode.MalformedPacket },
        { "DUP on QoS 0", V3, Packet(0x38, Str("a")), ReasonCode.MalformedPacket },
        { "PUBLISH QoS 1 with packet id 0", V3, Packet(0x32, Str("a"), U16(0)), ReasonCode.MalformedPacket },
        { "PUBACK with packet id 0", V3, Hex("4002 0000"), ReasonCode.MalformedPacket },
        { "SUBSCRIBE with packet id 0", V3, Packet(0x82, U16(0), Str("a"), B(0)), ReasonCode.MalformedPacket },
        { "UNSUBSCRIBE with packet id 0", V3, Packet(0xA2, U16(0), Str("a")), ReasonCode.MalformedPacket },
        { "topic not UTF-8", V3, Packet(0x30, Bin(0xC3, 0x28)), ReasonCode.MalformedPacket },
        { "topic with an overlong encoding", V3, Packet(0x30, Bin(0xC0, 0xAF)), ReasonCode.MalformedPacket },
        { "topic with an encoded surrogate", V3, Packet(0x30, Bin(0xED, 0xA0, 0x80)), ReasonCode.MalformedPacket },
        { "topic with U+0000", V3, Packet(0x30, Bin(0x61, 0x00)), ReasonCode.MalformedPacket },
        { "client id with U+0000", V3, Packet(0x10, Str("MQTT"), B(4, 2), U16(0), Bin(0x61, 0x00)), ReasonCode.MalformedPacket },
        { "user property not UTF-8", V5, Pub5([0x26, .. Bin(0xFF), .. Str("v")]), ReasonCode.MalformedPacket },
        { "topic with +", V3, Packet(0x30, Str("a/+")), ReasonCode.ProtocolError },
        { "topic with #", V5, Packet(0x30, Str("a/#"), B(0)), ReasonCode.ProtocolError },
        { "will topic with a wildcard", V3, Connect(V3, 0x06, null, Str("w/#"), Bin()), ReasonCode.ProtocolError },
        { "empty topic in 3.1.1", V3, Packet(0x30, Str("")), ReasonCode.TopicNameInvalid },
        { "empty topic without alias in 5", V5, Packet(0x30, Str(""), B(0)), ReasonCode.ProtocolError },
        { "filter with # not last", V3, Sub(V3, "a/#/b", 0), ReasonCode.TopicFilterInvalid },
        { "filter with # inside a level", V3, Sub(V3, "a/b#", 0), ReasonCode.TopicFilterInvalid },
        { "filter with + inside a level", V5, Sub(V5, "a/b+/c", 0), ReasonCode.TopicFilterInvalid },
        { "empty filter", V3, Sub(V3, "", 0), ReasonCode.TopicFilterInvalid },
        { "unsubscribe filter misplacing #", V3, Packet(0xA2, U16(1), Str("#/a")), ReasonCode.TopicFilterInvalid },
        { "$share without a filter", V5, Sub(V5, "$share/g", 0), ReasonCode.TopicFilterInvalid },
        { "$share with an empty filter", V5, Sub(V5, "$share/g/", 0), ReasonCode.TopicFilterInvalid },
        { "$share with an empty group", V5, Sub(V5, "$share//a", 0), ReasonCode.TopicFilterInvalid },
        { "$share with a wildcard group", V5, Sub(V5, "$share/g+/a", 0), ReasonCode.TopicFilterInvalid },
        { "$share with a bad filter", V3, Sub(V3, "$share/g/a#", 0), ReasonCode.TopicFilterInvalid },
        { "SUBSCRIBE without filters", V3, Packet(0x82, U16(1)), ReasonCode.ProtocolError },
        { "UNSUBSCRIBE without filters", V5, Packet(0xA2, U16(1), B(0)), ReasonCode.ProtocolError },
        { "CONNECT reserved flag", V3, Connect(V3, 0x03), ReasonCode.MalformedPacket },
        { "subscription options reserved bits in 3.1.1", V3, Sub(V3, "a", 0x04), ReasonCode.MalformedPacket },
        { "subscription options reserved bits in 5", V5, Sub(V5, "a", 0x40), ReasonCode.MalformedPacket },
        { "subscription QoS 3", V5, Sub(V5, "a", 0x03), ReasonCode.MalformedPacket },
        { "retain handling 3", V5, Sub(V5, "a", 0x30), ReasonCode.ProtocolError },
        { "no-local on a shared subscription", V5, Sub(V5, "$share/g/a", 0x04), ReasonCode.ProtocolError },
        { "will QoS without will flag", V3, Connect(V3, 0x0A), ReasonCode.MalformedPacket },
        { "will retain without will flag", V5, Connect(V5, 0x22), ReasonCode.MalformedPacket },
        { "will QoS 3", V3, Connect(V3, 0x1E, null, Str("w"), Bin()), ReasonCode.MalformedPacket },
        { "password without user name in 3.1.1", V3, Connect(V3, 0x42, null, Bin(1)), ReasonCode.MalformedPacket },
        { "duplicate message expiry", V5, Pub5([0x02, .. U32(1)], [0x02, .. U32(2)]), ReasonCode.ProtocolError },
        { "duplicate subscription identifier in SUBSCRIBE", V5, Packet(0x82, U16(1), Props([0x0B, 1], [0x0B, 2]), Str("a"), B(0)), ReasonCode.ProtocolError },
        { "duplicate session expiry in CONNECT", V5, Connect(V5, 0x02, Props([0x11, .. U32(1)], [0x11, .. U32(1)])), ReasonCode.ProtocolError },
        { "unknown property id", V5, Pub5([0x7F, 0]), ReasonCode.MalformedPacket },
        { "session expiry on PUBLISH", V5, Pub5([0x11, .. U32(1)]), ReasonCode.MalformedPacket },
        { "topic alias on CONNECT", V5, Connect(V5, 0x02, Props([0x23, .. U16(1)])), ReasonCode.MalformedPacket },
        { "will delay on PUBLISH", V5, Pub5([0x18, .. U32(1)]), ReasonCode.MalformedPacket },
        { "payload format indicator 2", V5, Pub5([0x01, 2]), ReasonCode.ProtocolError },
        { "receive maximum 0", V5, Connect(V5, 0x02, Props([0x21, .. U16(0)])), ReasonCode.ProtocolError },
        { "maximum packet size 0", V5, Connect(V5, 0x02, Props([0x27, .. U32(0)])), ReasonCode.ProtocolError },
        { "subscription identifier 0", V5, Packet(0x82, U16(1), Props([0x0B, 0]), Str("a"), B(0)), ReasonCode.ProtocolError },
        { "topic alias 0", V5, Pub5([0x23, .. U16(0)]), ReasonCode.TopicAliasInvalid },
        { "response topic with a wildcard", V5, Pub5([0x08, .. Str("r/#")]), ReasonCode.ProtocolError },
        { "authentication data without method", V5, Connect(V5, 0x02, Props([0x16, .. Bin(1)])), ReasonCode.ProtocolError },
        { "string longer than the packet", V3, Packet(0x30, U16(5), B(0x61)), ReasonCode.MalformedPacket },
        { "property length longer than the packet", V5, Packet(0x30, Str("a"), B(10, 0x01)), ReasonCode.MalformedPacket },
        { "property value cut short", V5, Packet(0x30, Str("a"), B(2, 0x02, 0)), ReasonCode.MalformedPacket },
        { "PUBACK with bytes left over in 3.1.1", V3, Hex("4003 0001 00"), ReasonCode.MalformedPacket },
        { "PINGREQ with a body", V5, Hex("C001 00"), ReasonCode.MalformedPacket },
        { "CONNECT with bytes left over", V3, Packet(0x10, Str("MQTT"), B(4, 2), U16(60), Str("c"), B(0)), ReasonCode.MalformedPacket },
        { "DISCONNECT with a body in 3.1.1", V3, Hex("E001 00"), ReasonCode.MalformedPacket },
        { "PUBACK reason code a PUBACK may not carry", V5, Hex("4003 0001 8E"), ReasonCode.ProtocolError },
        { "DISCONNECT reason code 0x01", V5, Hex("E001 01"), ReasonCode.ProtocolError },
        { "reserved packet type 0", V3, Hex("0000"), ReasonCode.MalformedPacket },
        { "AUTH in 3.1.1", V3, Hex("F000"), ReasonCode.MalformedPacket },
        { "MQTT protocol level 6", V3, Packet(0x10, Str("MQTT"), B(6, 2), U16(0), Str("c")), ReasonCode.UnsupportedProtocolVersion },
        { "MQIsdp protocol level 4", V5, Packet(0x10, Str("MQIsdp"), B(4, 2), U16(0), Str("c")), ReasonCode.UnsupportedProtocolVersion },
        { "unknown protocol name", V3, Packet(0x10, Str("HTTP"), B(4, 2), U16(0), Str("c")), ReasonCode.MalformedPacket },
    };

    [Theory]
    [MemberData(nameof(MalformedCases))]
    public void Malformed_input_is_refused_with_its_reason_code(string rule, MqttVersion version, byte[] bytes, byte reasonCode)
    {
        var error = Refuse(bytes, version);
        Assert.True(reasonCode == error.ReasonCode, $"{rule}: expected 0x{reasonCode:X2}, got 0x{error.ReasonCode:X2} ({error.Message})");
    }

    [Fact]
    public void Packet_larger_than_the_maximum_is_refused_from_its_fixed_header()
    {
        // Only the fixed header has arrived: 16,383 bytes announced, 1,000 allowed.
        var error = Refuse(Hex("30 FF7F"), V3, maxPacketSize: 1000);
        Assert.Equal(ReasonCode.PacketTooLarge, error.ReasonCode);
        var fits = MqttPacketWriter.ToArray(V3, new PublishPacket { Topic = "t", Payload = new byte[994] });
        Assert.Equal(1000, fits.Length);
        var buffer = new ReadOnlySequence<byte>(fits);
        Assert.Equal(ReadStatus.Packet, new MqttPacketReader().TryRead(ref buffer, V3, 1000, out _, out _));
    }

    [Fact]
    public void Topic_and_filter_longer_than_the_limit_are_refused()
    {
        Assert.Equal(ReasonCode.TopicNameInvalid, Refuse(Packet(0x30, Str("abcde")), V3, maxTopicLength: 4).ReasonCode);
        Assert.Equal(ReasonCode.TopicFilterInvalid, Refuse(Sub(V3, "abcde", 0), V3, maxTopicLength: 4).ReasonCode);
    }

    [Fact]
    public void Valid_filters_and_topics_are_accepted()
    {
        foreach (var filter in new[] { "#", "+", "+/+", "a/+/b", "/", "//", "a/#", "+/#", "$SYS/#", "$share/g/#", "$share/g/+/x", "$shared/x", "ü/ñ" })
        {
            Assert.Equal(filter, ((SubscribePacket)Read(Sub(V3, filter, 1), V3)).Subscriptions[0].Filter);
        }
        foreach (var topic in new[] { "/", "a", "a//b", "$SYS/x", "ü€𝄞" })
        {
            Assert.Equal(topic, ((PublishPacket)Read(Packet(0x30, Str(topic)), V3)).Topic);
        }
    }

    // ---- fuzz ----

    static IEnumerable<(MqttVersion Version, byte[] Bytes)> Corpus()
    {
        foreach (var version in new[] { MqttVersion.V311, MqttVersion.V500 })
        {
            var v5 = version == MqttVersion.V500;
            MqttPacket[] packets =
            [
                new ConnectPacket
                {
                    Version = version, ClientId = "fuzz", Username = "u", Password = [1], KeepAlive = 5,
                    Will = new WillMessage { Topic = "w", Payload = [1, 2], QoS = 1, DelayInterval = v5 ? 3u : 0 },
                    SessionExpiryInterval = v5 ? 10u : 0, TopicAliasMaximum = (ushort)(v5 ? 5 : 0), UserProperties = v5 ? UserProps() : null,
                },
                new ConnAckPacket { SessionPresent = true, ServerKeepAlive = v5 ? (ushort)9 : null, ReasonString = v5 ? "r" : null },
                new PublishPacket { Topic = "a/b", QoS = 2, PacketId = 4, Payload = "{\"light\": 1}"u8.ToArray(),
                    Properties = v5 ? new MessageProperties { ContentType = "c", CorrelationData = [1], UserProperties = UserProps() } : null,
                    TopicAlias = (ushort)(v5 ? 1 : 0) },
                new PublishPacket { Topic = "x", Payload = new byte[300] },
                new PublishAckPacket(PacketType.PubRel) { PacketId = 3, ReasonCode = v5 ? ReasonCode.PacketIdentifierNotFound : (byte)0 },
                new SubscribePacket { PacketId = 2, Subscriptions = [new("a/+", 1), new("$share/g/#", 2)], SubscriptionIdentifier = v5 ? 7u : null },
                new SubAckPacket { PacketId = 2, ReasonCodes = [0, 1] },
                new UnsubscribePacket { PacketId = 2, Filters = ["a/+"] },
                new UnsubAckPacket { PacketId = 2, ReasonCodes = v5 ? [0] : [] },
                PingReqPacket.Instance,
                new DisconnectPacket { ReasonCode = v5 ? ReasonCode.DisconnectWithWill : (byte)0, ReasonString = v5 ? "x" : null },
            ];
            foreach (var packet in packets)
            {
                yield return (version, MqttPacketWriter.ToArray(version, packet));
            }
        }
    }

    [Fact]
    public void Fuzzed_input_never_throws_never_stalls_and_what_it_accepts_writes_back()
    {
        var corpus = Corpus().ToArray();
        var random = new Random(20261206);
        var clock = Stopwatch.StartNew();
        var accepted = 0;
        for (var i = 0; i < 20_000; i++)
        {
            var (version, valid) = corpus[random.Next(corpus.Length)];
            var bytes = Mutate(random, valid, corpus);
            var cuts = Enumerable.Range(0, random.Next(3)).Select(_ => random.Next(Math.Max(1, bytes.Length))).ToArray();
            var buffer = Segmented(bytes, cuts);
            var reader = new MqttPacketReader(random.Next(2) == 0 ? ushort.MaxValue : 8);
            var maxPacketSize = random.Next(4) == 0 ? random.Next(2, 64) : Unlimited;
            for (var reads = 0; ; reads++)
            {
                Assert.True(reads <= bytes.Length, "more packets than bytes: the reader does not advance");
                var before = buffer.Length;
                ReadStatus status;
                MqttPacket? packet;
                try
                {
                    status = reader.TryRead(ref buffer, version, maxPacketSize, out packet, out var error);
                    if (status == ReadStatus.Malformed)
                    {
                        Assert.NotEqual(0, error.ReasonCode);
                    }
                }
                catch (Exception e)
                {
                    Assert.Fail($"case {i}: {Convert.ToHexString(bytes)} threw {e}");
                    return;
                }
                if (status != ReadStatus.Packet)
                {
                    Assert.Equal(before, buffer.Length);
                    break;
                }
                Assert.True(buffer.Length < before, $"case {i}: a packet was read but nothing consumed");
                accepted++;
                var again = MqttPacketWriter.ToArray(version, packet!);
                var reread = new ReadOnlySequence<byte>(again);
                Assert.Equal(ReadStatus.Packet, new MqttPacketReader().TryRead(ref reread, version, Unlimited, out _, out var rereadError));
                _ = rereadError;
            }
        }
        Assert.True(accepted > 1000, $"only {accepted} packets accepted: the mutations are too destructive to test the happy path");
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(10), $"fuzz run took {clock.Elapsed}");
    }

    static byte[] Mutate(Random random, byte[] valid, (MqttVersion, byte[] Bytes)[] corpus)
    {
        var bytes = valid.ToList();
        switch (random.Next(8))
        {
            case 0:
                return [.. bytes];
            case 1:
                for (var n = random.Next(1, 4); n > 0; n--)
                {
                    bytes[random.Next(bytes.Count)] ^= (byte)(1 << random.Next(8));
                }
                break;
            case 2:
                bytes[random.Next(bytes.Count)] = (byte)random.Next(256);
                break;
            case 3:
                bytes.RemoveRange(random.Next(bytes.Count), 1);
                break;
            case 4:
                bytes.Insert(random.Next(bytes.Count + 1), (byte)random.Next(256));
                break;
            case 5:
                return [.. bytes.Take(random.Next(bytes.Count))];
            case 6:
                bytes.AddRange(corpus[random.Next(corpus.Length)].Bytes);
                break;
            default:
                var garbage = new byte[random.Next(1, 40)];
                random.NextBytes(garbage);
                return garbage;
        }
        return [.. bytes];
    }

    // ---- the hot path's allocations (a correctness property, not a timing) ----

    static object? s_escape;

    [Theory]
    [MemberData(nameof(Versions))]
    public void Reading_a_publish_to_a_cached_topic_allocates_only_the_packet_and_the_payload_copy(MqttVersion version)
    {
        var bytes = MqttPacketWriter.ToArray(version, new PublishPacket { Topic = "dev1/telemetry", QoS = 1, PacketId = 1, Payload = "{\"light\": 412}"u8.ToArray() });
        var sequence = new ReadOnlySequence<byte>(bytes);
        var reader = new MqttPacketReader();
        ReadOnce();

        // Kept in a field so the JIT cannot put them on the stack.
        var before = GC.GetAllocatedBytesForCurrentThread();
        s_escape = new PublishPacket();
        s_escape = new byte[14];
        var budget = GC.GetAllocatedBytesForCurrentThread() - before;

        const int Reads = 1000;
        before = GC.GetAllocatedBytesForCurrentThread();
        for (var i = 0; i < Reads; i++)
        {
            ReadOnce();
        }
        var perRead = (GC.GetAllocatedBytesForCurrentThread() - before) / (double)Reads;
        TestContext.Current.TestOutputHelper?.WriteLine($"{version}: {perRead} bytes allocated per PUBLISH read (packet + 14-byte payload copy = {budget})");
        Assert.True(perRead <= budget, $"{perRead} bytes a read, budget {budget}");

        void ReadOnce()
        {
            var buffer = sequence;
            if (reader.TryRead(ref buffer, version, Unlimited, out var packet, out _) != ReadStatus.Packet || ((PublishPacket)packet!).Payload.Length != 14)
            {
                throw new InvalidOperationException("not read");
            }
        }
    }

    [Theory]
    [MemberData(nameof(Versions))]
    public void Writing_a_publish_allocates_nothing(MqttVersion version)
    {
        var message = new ApplicationMessage
        {
            Topic = "dev1/commands",
            Payload = "{\"led_on\": true}"u8.ToArray(),
            Properties = new MessageProperties { ContentType = "application/json", UserProperties = UserProps() },
        };
        var output = new ArrayBufferWriter<byte>(4096);
        uint[] subscriptionIds = [3];
        MqttPacketWriter.WritePublish(output, version, message, 1, 1, false, false, subscriptionIds, messageExpiryInterval: 5);
        var before = GC.GetAllocatedBytesForCurrentThread();
        for (var i = 0; i < 1000; i++)
        {
            output.ResetWrittenCount();
            MqttPacketWriter.WritePublish(output, version, message, 1, 1, false, false, subscriptionIds, topicAlias: 1, messageExpiryInterval: 5);
        }
        var allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        TestContext.Current.TestOutputHelper?.WriteLine($"{version}: {allocated / 1000.0} bytes allocated per PUBLISH written");
        Assert.Equal(0, allocated);
    }
}
