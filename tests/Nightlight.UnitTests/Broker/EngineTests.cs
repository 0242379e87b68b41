using System.Text;
using Nightlight.Broker.Core;
using Nightlight.Broker.Core.Engine;
using Nightlight.Broker.Core.Packets;
using Nightlight.Broker.Core.Persistence;
using Microsoft.Extensions.Logging.Abstractions;

namespace Nightlight.Tests.Broker;

/// <summary>The broker engine's protocol logic, driven with packet objects: what each client would see on the wire.</summary>
public class EngineTests : IAsyncDisposable
{
    readonly EngineHarness _h = new();

    public ValueTask DisposeAsync() => _h.DisposeAsync();

    // ---- connect ----

    [Fact]
    public void An_empty_client_id_is_assigned_for_5_and_for_a_clean_3_1_1_session()
    {
        var v5 = _h.Connect("", MqttVersion.V500);
        Assert.Equal(ReasonCode.Success, v5.ConnAck.ReasonCode);
        Assert.False(string.IsNullOrEmpty(v5.ConnAck.AssignedClientIdentifier));
        Assert.Equal(v5.ConnAck.AssignedClientIdentifier, v5.Handler.Client.ClientId);

        var clean311 = _h.Connect("", MqttVersion.V311, clean: true);
        Assert.Equal(ReasonCode.Success, clean311.ConnAck.ReasonCode);
        Assert.Null(clean311.ConnAck.AssignedClientIdentifier);
        Assert.NotEqual(v5.Handler.Client.ClientId, clean311.Handler.Client.ClientId);

        var persistent311 = _h.Connect("", MqttVersion.V311, clean: false);
        Assert.True(persistent311.Refused);
        Assert.Equal(ReasonCode.ClientIdentifierNotValid, persistent311.ConnAck.ReasonCode);
    }

    [Fact]
    public void A_refused_connect_gets_the_hooks_reason_and_no_session()
    {
        _h.Hooks.Authenticate = _ => ConnectDecision.Refuse(ReasonCode.BadUserNameOrPassword, "nope");
        var c = _h.Connect("dev1");
        Assert.True(c.Refused);
        Assert.Equal(ReasonCode.BadUserNameOrPassword, c.ConnAck.ReasonCode);
        Assert.Equal("nope", c.ConnAck.ReasonString);
        Assert.Equal(0, _h.Broker.Statistics.Sessions);
    }

    [Fact]
    public void Connack_for_5_announces_the_servers_limits_and_caps_session_expiry()
    {
        _h.Options.MaxSessionExpiry = 3600;
        _h.Options.ServerKeepAlive = 30;
        var c = _h.Connect("dev1", expiry: 100_000, configure: p => p.RequestResponseInformation = true);
        var ack = c.ConnAck;
        Assert.Equal(3600u, ack.SessionExpiryInterval);
        Assert.Equal(_h.Options.ReceiveMaximum, ack.ReceiveMaximum);
        Assert.Equal(_h.Options.TopicAliasMaximum, ack.TopicAliasMaximum);
        Assert.Equal((uint)_h.Options.MaxPacketSize, ack.MaximumPacketSize);
        Assert.Equal((ushort)30, ack.ServerKeepAlive);
        Assert.True(ack.SharedSubscriptionAvailable);
        Assert.True(ack.SubscriptionIdentifiersAvailable);
        Assert.True(ack.WildcardSubscriptionAvailable);
        Assert.True(ack.RetainAvailable);
        Assert.Null(ack.MaximumQoS);
        Assert.Equal("$response/dev1/", ack.ResponseInformation);
    }

    [Fact]
    public void A_second_connection_takes_the_session_over_and_the_first_is_closed()
    {
        var first = _h.Connect("dev1", clean: false, expiry: 300);
        first.Subscribe("a/b", qos: 1);
        var second = _h.Connect("dev1", clean: false, expiry: 300);

        Assert.Equal(ReasonCode.SessionTakenOver, first.Sink.ClosedWith);
        Assert.True(second.ConnAck.SessionPresent);
        Assert.Contains(("dev1", DisconnectKind.TakenOver), _h.Hooks.Disconnected);

        // The old connection's late report changes nothing; the subscription carried over.
        first.Lose();
        _h.Connect("pub").Publish("a/b", "hello", qos: 1);
        Assert.Equal(["hello"], second.Payloads);
        Assert.Empty(first.Payloads);
        Assert.Equal(2, _h.Broker.Statistics.Sessions); // dev1 and pub
    }

    [Fact]
    public void A_session_made_by_one_identity_cannot_be_taken_by_another()
    {
        _h.Hooks.Authenticate = c => ConnectDecision.Accept(c.Username, ClientLimits.Unlimited);
        var owner = _h.Connect("devA-1", clean: false, expiry: 300, configure: c => c.Username = "devA");
        owner.Subscribe("devA-1/commands", qos: 1);
        var thief = _h.Connect("devA-1", clean: false, expiry: 300, configure: c => c.Username = "devB");
        Assert.True(thief.Refused);
        Assert.Equal(ReasonCode.NotAuthorized, thief.ConnAck.ReasonCode);
        Assert.Null(owner.Sink.ClosedWith);
        Assert.False(_h.Connect("devA-1", clean: false, expiry: 300, configure: c => c.Username = "devA").Refused);
    }

    [Fact]
    public void Clean_start_discards_the_old_session()
    {
        var first = _h.Connect("dev1", clean: false, expiry: 300);
        first.Subscribe("a/b", qos: 1);
        first.Disconnect();
        var second = _h.Connect("dev1", clean: true, expiry: 300);
        Assert.False(second.ConnAck.SessionPresent);
        _h.Connect("pub").Publish("a/b", "hello", qos: 1);
        Assert.Empty(second.Payloads);
    }

    // ---- persistent sessions ----

    [Theory]
    [InlineData(MqttVersion.V311)]
    [InlineData(MqttVersion.V500)]
    public void A_persistent_session_queues_while_offline_and_redelivers_unacknowledged_with_dup(MqttVersion version)
    {
        var sub = _h.Connect("sub", version, clean: false, expiry: 300);
        sub.Subscribe("x/#", qos: 1);
        var pub = _h.Connect("pub", version);
        pub.Publish("x/1", "one", qos: 1);
        Assert.Equal(["one"], sub.Payloads); // sent, never acknowledged
        sub.Lose();

        pub.Publish("x/2", "two", qos: 1);
        pub.Publish("x/3", "zero", qos: 0); // QoS 0 is not queued for an offline session

        var back = _h.Connect("sub", version, clean: false, expiry: 300);
        Assert.True(back.ConnAck.SessionPresent);
        var sent = back.Sink.Publishes;
        Assert.Equal(["one", "two"], sent.Select(p => p.Text));
        Assert.True(sent[0].Dup);
        Assert.Equal(sub.Sink.Publishes[0].PacketId, sent[0].PacketId);
        Assert.False(sent[1].Dup);
    }

    [Fact]
    public void A_3_1_1_session_without_clean_session_is_persistent_and_capped_by_the_maximum_expiry()
    {
        _h.Options.MaxSessionExpiry = 60;
        var sub = _h.Connect("sub", MqttVersion.V311, clean: false);
        sub.Subscribe("x", qos: 1);
        sub.Lose();
        _h.Connect("pub", MqttVersion.V311).Publish("x", "kept", qos: 1);
        _h.Time.Advance(TimeSpan.FromSeconds(59));
        Assert.Equal(["kept"], _h.Connect("sub", MqttVersion.V311, clean: false).Payloads);

        _h.Connect("sub", MqttVersion.V311, clean: false).Lose();
        _h.Time.Advance(TimeSpan.FromSeconds(61));
        Assert.False(_h.Connect("sub", MqttVersion.V311, clean: false).ConnAck.SessionPresent);
    }

    [Fact]
    public void Session_expiry_ends_the_session_and_counts_what_it_still_held()
    {
        var sub = _h.Connect("sub", clean: false, expiry: 10);
        sub.Subscribe("x", qos: 1);
        sub.Disconnect();
        var pub = _h.Connect("pub");
        pub.Publish("x", "a", qos: 1);
        pub.Publish("x", "b", qos: 1);
        Assert.Equal(2, _h.Store.DeliveriesOf("sub").Count);

        _h.Time.Advance(TimeSpan.FromSeconds(11));
        Assert.Equal(2, _h.Hooks.Dropped.Count(d => d is ("sub", "x", DropReason.SessionExpired)));
        Assert.False(_h.Store.HasSession("sub"));
        Assert.False(_h.Connect("sub", clean: false, expiry: 10).ConnAck.SessionPresent);
    }

    [Fact]
    public void A_session_with_zero_expiry_ends_at_disconnect()
    {
        var sub = _h.Connect("sub", clean: false, expiry: 0);
        sub.Subscribe("x", qos: 1);
        sub.Disconnect();
        Assert.Equal(0, _h.Broker.Statistics.Sessions);
        _h.Connect("pub").Publish("x", "a", qos: 1);
        Assert.False(_h.Connect("sub", clean: false, expiry: 0).ConnAck.SessionPresent);
        Assert.False(_h.Store.HasSession("sub"));
    }

    // ---- QoS flows ----

    [Fact]
    public void Qos1_from_a_client_is_acknowledged_and_qos2_delivered_once_despite_a_resend()
    {
        var sub = _h.Connect("sub");
        sub.Subscribe("t", qos: 2);
        var pub = _h.Connect("pub");

        var id1 = pub.Publish("t", "one", qos: 1);
        Assert.Equal(id1, Assert.Single(pub.AcksOf(PacketType.PubAck)).PacketId);

        var id2 = pub.Publish("t", "two", qos: 2);
        pub.Publish("t", "two", qos: 2, packetId: id2, dup: true);
        Assert.Equal(2, pub.AcksOf(PacketType.PubRec).Count);
        Assert.Equal(["one", "two"], sub.Payloads);

        pub.Ack(PacketType.PubRel, id2);
        Assert.Equal(id2, Assert.Single(pub.AcksOf(PacketType.PubComp)).PacketId);

        // The id is free again: the same id now carries a new message.
        pub.Publish("t", "three", qos: 2, packetId: id2);
        Assert.Equal(["one", "two", "three"], sub.Payloads);
    }

    [Fact]
    public void Qos2_towards_a_client_releases_on_pubrec_and_resends_pubrel_after_a_reconnect()
    {
        var sub = _h.Connect("sub", clean: false, expiry: 60);
        sub.Subscribe("t", qos: 2);
        _h.Connect("pub").Publish("t", "m", qos: 2);
        var sent = Assert.Single(sub.Sink.Publishes);
        Assert.Equal(2, sent.QoS);

        sub.Ack(PacketType.PubRec, sent.PacketId);
        Assert.Equal(sent.PacketId, Assert.Single(sub.AcksOf(PacketType.PubRel)).PacketId);
        Assert.True(Assert.Single(_h.Store.DeliveriesOf("sub")).Released);
        sub.Lose();

        var back = _h.Connect("sub", clean: false, expiry: 60);
        Assert.Empty(back.Sink.Publishes);
        Assert.Equal(sent.PacketId, Assert.Single(back.AcksOf(PacketType.PubRel)).PacketId);
        back.Ack(PacketType.PubComp, sent.PacketId);
        Assert.Empty(_h.Store.DeliveriesOf("sub"));
    }

    [Fact]
    public void Qos_is_the_minimum_of_published_and_granted()
    {
        var sub = _h.Connect("sub");
        sub.Subscribe("t", qos: 1);
        var pub = _h.Connect("pub");
        pub.Publish("t", "a", qos: 2);
        pub.Publish("t", "b", qos: 0);
        Assert.Equal([1, 0], sub.Sink.Publishes.Select(p => (int)p.QoS));
    }

    [Fact]
    public void The_clients_receive_maximum_bounds_messages_in_flight()
    {
        var sub = _h.Connect("sub", receiveMaximum: 2);
        sub.Subscribe("t", qos: 1);
        var pub = _h.Connect("pub");
        for (var i = 1; i <= 5; i++)
        {
            pub.Publish("t", $"m{i}", qos: 1);
        }

        Assert.Equal(["m1", "m2"], sub.Payloads);
        sub.Ack(PacketType.PubAck, sub.Sink.Publishes[0].PacketId);
        Assert.Equal(["m1", "m2", "m3"], sub.Payloads);
        sub.Ack(PacketType.PubAck, sub.Sink.Publishes[1].PacketId);
        sub.Ack(PacketType.PubAck, sub.Sink.Publishes[2].PacketId);
        Assert.Equal(["m1", "m2", "m3", "m4", "m5"], sub.Payloads);
        Assert.Equal(5, sub.Sink.Publishes.Select(p => p.PacketId).Distinct().Count());
    }

    [Fact]
    public void More_publishes_in_flight_than_the_brokers_receive_maximum_is_a_protocol_error()
    {
        _h.Options.ReceiveMaximum = 2;
        var pub = _h.Connect("pub");
        pub.Publish("t", qos: 2);
        pub.Publish("t", qos: 2);
        pub.Publish("t", qos: 2);
        Assert.Equal(ReasonCode.ReceiveMaximumExceeded, pub.Sink.ClosedWith);
        Assert.Contains(("pub", ReasonCode.ReceiveMaximumExceeded), _h.Hooks.Violations);
    }

    [Fact]
    public void A_qos1_acknowledgement_waits_for_the_store_when_a_stored_session_took_the_message()
    {
        var sub = _h.Connect("sub", clean: false, expiry: 60);
        sub.Subscribe("stored", qos: 1);
        sub.Lose();
        var pub = _h.Connect("pub");
        var commit = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _h.Store.PendingCommit = commit;

        var first = pub.Publish("stored", qos: 1);
        var second = pub.Publish("nobody", qos: 1); // needs no commit, but must not overtake the first
        Assert.Empty(pub.AcksOf(PacketType.PubAck));

        commit.SetResult();
        SpinWait.SpinUntil(() => pub.AcksOf(PacketType.PubAck).Count == 2, TimeSpan.FromSeconds(5));
        Assert.Equal([first, second], pub.AcksOf(PacketType.PubAck).Select(a => a.PacketId));
        Assert.Equal(ReasonCode.NoMatchingSubscribers, pub.AcksOf(PacketType.PubAck)[1].ReasonCode);
    }

    [Fact]
    public void A_suback_of_a_stored_session_waits_for_the_store_and_nothing_overtakes_it()
    {
        var pub = _h.Connect("pub");
        pub.Publish("news/old", "retained", qos: 1, retain: true);
        var sub = _h.Connect("sub", clean: false, expiry: 60);
        var commit = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _h.Store.PendingCommit = commit;

        sub.Subscribe("news/#", qos: 1);
        pub.Publish("news/new", "live");
        Assert.Empty(sub.Acks<SubAckPacket>());
        Assert.Empty(sub.Sink.Publishes);

        commit.SetResult();
        SpinWait.SpinUntil(() => sub.Sink.Publishes.Count == 2, TimeSpan.FromSeconds(5));
        Assert.Single(sub.Acks<SubAckPacket>());
        Assert.Equal(["retained", "live"], sub.Payloads);
        Assert.True(_h.Store.Load().Sessions.Single(s => s.Session.ClientId == "sub").Session.Subscriptions is [{ Filter: "news/#" }]);
    }

    [Fact]
    public void An_unsuback_of_a_stored_session_waits_for_the_store_and_a_clean_session_is_answered_at_once()
    {
        var stored = _h.Connect("stored", clean: false, expiry: 60);
        stored.Subscribe("t");
        var clean = _h.Connect("clean");
        clean.Subscribe("t");
        var commit = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _h.Store.PendingCommit = commit;

        stored.Handler.OnUnsubscribe(new UnsubscribePacket { PacketId = stored.NextId(), Filters = ["t"] });
        clean.Handler.OnUnsubscribe(new UnsubscribePacket { PacketId = clean.NextId(), Filters = ["t"] });
        Assert.Empty(stored.Acks<UnsubAckPacket>());
        Assert.Single(clean.Acks<UnsubAckPacket>());

        commit.SetResult();
        SpinWait.SpinUntil(() => stored.Acks<UnsubAckPacket>().Count == 1, TimeSpan.FromSeconds(5));
        Assert.Single(stored.Acks<UnsubAckPacket>());
    }

    // ---- routing ----

    [Fact]
    public void Overlapping_subscriptions_deliver_once_with_the_highest_qos_and_every_identifier()
    {
        var sub = _h.Connect("sub");
        sub.Subscribe("a/+", qos: 0, identifier: 1);
        sub.Subscribe("a/#", qos: 2, identifier: 2);
        sub.Subscribe("a/b", qos: 1);
        _h.Connect("pub").Publish("a/b", qos: 2);
        var sent = Assert.Single(sub.Sink.Publishes);
        Assert.Equal(2, sent.QoS);
        Assert.Equal([1u, 2u], sent.SubscriptionIdentifiers.Order());
    }

    [Fact]
    public void Shared_subscriptions_take_turns_and_a_normal_subscription_gets_its_own_copy()
    {
        var a = _h.Connect("a");
        var b = _h.Connect("b");
        var watcher = _h.Connect("w");
        a.Subscribe("$share/g/jobs/+", qos: 1);
        b.Subscribe("$share/g/jobs/+", qos: 1);
        watcher.Subscribe("jobs/#", qos: 0);
        Assert.Equal(ReasonCode.GrantedQoS1, a.LastSubAck.ReasonCodes[0]);

        var pub = _h.Connect("pub");
        for (var i = 0; i < 6; i++)
        {
            pub.Publish("jobs/x", $"{i}", qos: 1);
        }

        Assert.Equal(3, a.Sink.Publishes.Count);
        Assert.Equal(3, b.Sink.Publishes.Count);
        Assert.Equal(6, watcher.Sink.Publishes.Count);

        b.Lose();
        pub.Publish("jobs/x", "after", qos: 1);
        Assert.Equal("after", a.Sink.Publishes[^1].Text);
    }

    [Fact]
    public void Dollar_topics_are_not_matched_by_filters_starting_with_a_wildcard()
    {
        var all = _h.Connect("all");
        all.Subscribe("#");
        all.Subscribe("+/info");
        var sys = _h.Connect("sys");
        sys.Subscribe("$SYS/#");
        _h.Broker.Publish(new ApplicationMessage { Topic = "$SYS/info", Payload = "up"u8.ToArray() });
        Assert.Empty(all.Sink.Publishes);
        Assert.Equal(["up"], sys.Payloads);
    }

    [Theory]
    [InlineData("a/b", "a/b", true)]
    [InlineData("a/+", "a/b", true)]
    [InlineData("a/+", "a", false)]
    [InlineData("a/#", "a", true)]
    [InlineData("a/#", "a/b/c", true)]
    [InlineData("#", "a/b", true)]
    [InlineData("+/+", "/x", true)]
    [InlineData("+", "/x", false)]
    [InlineData("a/b", "a/b/c", false)]
    [InlineData("#", "$SYS/x", false)]
    [InlineData("+/x", "$SYS/x", false)]
    [InlineData("$SYS/#", "$SYS", true)]
    public void Topic_filters_match_as_the_spec_says_both_in_the_tree_and_for_retained(string filter, string topic, bool expected)
    {
        Assert.Equal(expected, TopicFilter.Matches(filter, topic));
        var sub = _h.Connect("sub-" + Guid.NewGuid());
        sub.Subscribe(filter);
        _h.Broker.Publish(new ApplicationMessage { Topic = topic, Payload = "p"u8.ToArray() });
        Assert.Equal(expected ? 1 : 0, sub.Sink.Publishes.Count);
    }

    [Theory]
    [InlineData("a/#/b")]
    [InlineData("a/b#")]
    [InlineData("a+")]
    [InlineData("")]
    [InlineData("$share/g")]
    [InlineData("$share//a")]
    [InlineData("$share/g+/a")]
    public void An_invalid_filter_is_refused_in_suback(string filter)
    {
        var sub = _h.Connect("sub");
        sub.Subscribe(filter);
        Assert.Equal(ReasonCode.TopicFilterInvalid, sub.LastSubAck.ReasonCodes[0]);
    }

    [Fact]
    public void No_local_keeps_a_clients_own_messages_from_it()
    {
        var c = _h.Connect("c");
        c.Subscribe("chat", noLocal: true);
        c.Publish("chat", "mine");
        _h.Connect("other").Publish("chat", "theirs");
        Assert.Equal(["theirs"], c.Payloads);
    }

    [Fact]
    public void After_unsuback_nothing_more_arrives_for_that_filter()
    {
        var sub = _h.Connect("sub");
        sub.Subscribe("t", qos: 1);
        sub.Handler.OnUnsubscribe(new UnsubscribePacket { PacketId = 9, Filters = ["t", "never"] });
        var unsuback = Assert.Single(sub.Acks<UnsubAckPacket>());
        Assert.Equal([ReasonCode.Success, ReasonCode.NoSubscriptionExisted], unsuback.ReasonCodes);
        _h.Connect("pub").Publish("t", qos: 1);
        Assert.Empty(sub.Sink.Publishes);
    }

    [Fact]
    public async Task Unsubscribing_while_another_thread_publishes_never_delivers_after_the_unsuback()
    {
        var pub = _h.Connect("pub");
        for (var round = 0; round < 50; round++)
        {
            var sub = _h.Connect("sub");
            sub.Subscribe("race");
            using var stop = new CancellationTokenSource();
            var publisher = Task.Run(() =>
            {
                while (!stop.IsCancellationRequested)
                {
                    _h.Broker.Publish(new ApplicationMessage { Topic = "race", Payload = "p"u8.ToArray() });
                }
            });
            SpinWait.SpinUntil(() => sub.Sink.Publishes.Count > 0, TimeSpan.FromSeconds(5));
            sub.Handler.OnUnsubscribe(new UnsubscribePacket { PacketId = 1, Filters = ["race"] });
            var atUnsuback = sub.Sink.Publishes.Count;
            Thread.Sleep(1);
            stop.Cancel();
            await publisher;
            Assert.Equal(atUnsuback, sub.Sink.Publishes.Count);
            sub.Disconnect();
        }
    }

    [Fact]
    public void Subscribe_refusals_are_per_filter()
    {
        _h.Hooks.SubscribeCheck = (_, filter) => filter != "secret/#";
        _h.Hooks.Authenticate = _ => ConnectDecision.Accept("dev", new ClientLimits(0, 2, 0, 0, 100));
        var v5 = _h.Connect("v5");
        v5.Handler.OnSubscribe(new SubscribePacket
        {
            PacketId = 1,
            Subscriptions = [new("a", 1), new("secret/#", 1), new("b", 2), new("c", 0)],
        });
        Assert.Equal([ReasonCode.GrantedQoS1, ReasonCode.NotAuthorized, ReasonCode.GrantedQoS2, ReasonCode.QuotaExceeded], v5.LastSubAck.ReasonCodes);
    }

    [Fact]
    public void A_sessions_first_second_and_replaced_subscriptions_each_deliver_once_and_unsubscribing_stops_them()
    {
        // One subscription is kept apart from the many; the second, a replacement and an unsubscribe move between them.
        _h.Hooks.Authenticate = _ => ConnectDecision.Accept("dev", new ClientLimits(0, 2, 0, 0, 100));
        var sub = _h.Connect("sub");
        var pub = _h.Connect("pub");
        sub.Subscribe("a", qos: 0);
        sub.Subscribe("a", qos: 1);
        sub.Subscribe("b", qos: 1);
        sub.Handler.OnSubscribe(new SubscribePacket { PacketId = 9, Subscriptions = [new("c", 1)] });
        Assert.Equal([ReasonCode.QuotaExceeded], sub.LastSubAck.ReasonCodes);
        pub.Publish("a", "1", qos: 1);
        pub.Publish("b", "2", qos: 1);
        Assert.Equal(["a:1:1", "b:2:1"], sub.Sink.Publishes.Select(p => $"{p.Message.Topic}:{Encoding.UTF8.GetString(p.Message.Payload.Span)}:{p.QoS}"));

        sub.Handler.OnUnsubscribe(new UnsubscribePacket { PacketId = 10, Filters = ["a", "x"] });
        pub.Publish("a", "3");
        pub.Publish("b", "4");
        sub.Subscribe("c", qos: 0);
        pub.Publish("c", "5");
        sub.Handler.OnUnsubscribe(new UnsubscribePacket { PacketId = 11, Filters = ["b", "c"] });
        pub.Publish("b", "6");
        pub.Publish("c", "7");
        Assert.Equal(["1", "2", "4", "5"], sub.Sink.Publishes.Select(p => Encoding.UTF8.GetString(p.Message.Payload.Span)));
    }

    // ---- publish refusals ----

    [Fact]
    public void A_publish_the_hooks_refuse_is_dropped_acknowledged_with_not_authorized_in_5_and_success_in_3_1_1()
    {
        _h.Hooks.PublishCheck = (_, topic) => topic != "forbidden";
        var sub = _h.Connect("sub");
        sub.Subscribe("forbidden");
        var v5 = _h.Connect("v5");
        var v3 = _h.Connect("v3", MqttVersion.V311);
        v5.Publish("forbidden", qos: 1);
        v3.Publish("forbidden", qos: 1);
        v3.Publish("forbidden", qos: 2);
        Assert.Equal(ReasonCode.NotAuthorized, v5.AcksOf(PacketType.PubAck)[0].ReasonCode);
        Assert.Equal(ReasonCode.Success, v3.AcksOf(PacketType.PubAck)[0].ReasonCode);
        Assert.Equal(ReasonCode.Success, v3.AcksOf(PacketType.PubRec)[0].ReasonCode);
        Assert.Empty(sub.Sink.Publishes);
        Assert.Equal(3, _h.Hooks.Dropped.Count(d => d.Reason == DropReason.NotAuthorized));
    }

    [Fact]
    public void A_wildcard_in_a_publish_topic_closes_the_connection()
    {
        var c = _h.Connect("c");
        c.Publish("a/+");
        Assert.Equal(ReasonCode.ProtocolError, c.Sink.ClosedWith);
        Assert.Contains(("c", DisconnectKind.ProtocolError), _h.Hooks.Disconnected);
    }

    // ---- retained ----

    [Fact]
    public void Retained_messages_are_kept_replaced_and_cleared_and_sent_on_subscribe_with_retain_set()
    {
        var pub = _h.Connect("pub");
        pub.Publish("status/a", "old", retain: true, qos: 1);
        pub.Publish("status/a", "new", retain: true, qos: 1);
        pub.Publish("status/b", "b", retain: true);
        pub.Publish("status/b", "", retain: true); // clears
        Assert.Equal(1, _h.Broker.Statistics.RetainedMessages);

        var sub = _h.Connect("sub");
        sub.Subscribe("status/+", qos: 1);
        var sent = Assert.Single(sub.Sink.Publishes);
        Assert.Equal(("new", true, (byte)1), (sent.Text, sent.Retain, sent.QoS));
        Assert.IsType<SubAckPacket>(sub.Sink.Control[^1]); // SUBACK first, then the retained message

        // Normal delivery clears RETAIN unless retain-as-published.
        var rap = _h.Connect("rap");
        rap.Subscribe("status/#", retainAsPublished: true, retainHandling: 2);
        pub.Publish("status/a", "live", retain: true);
        Assert.False(sub.Sink.Publishes[^1].Retain);
        Assert.True(Assert.Single(rap.Sink.Publishes).Retain);
    }

    [Fact]
    public void Retain_handling_1_sends_retained_only_for_a_new_subscription_and_2_never()
    {
        _h.Connect("pub").Publish("r", "v", retain: true);
        var c = _h.Connect("c");
        c.Subscribe("r", retainHandling: 1);
        c.Subscribe("r", retainHandling: 1);
        Assert.Single(c.Sink.Publishes);
        var never = _h.Connect("never");
        never.Subscribe("r", retainHandling: 2);
        Assert.Empty(never.Sink.Publishes);
        var shared = _h.Connect("shared");
        shared.Subscribe("$share/g/r");
        Assert.Empty(shared.Sink.Publishes);
    }

    [Fact]
    public void An_expired_retained_message_is_forgotten()
    {
        _h.Connect("pub").Publish("r", "soon gone", retain: true, expiry: 5);
        _h.Time.Advance(TimeSpan.FromSeconds(6));
        var sub = _h.Connect("sub");
        sub.Subscribe("r");
        Assert.Empty(sub.Sink.Publishes);
        Assert.Equal(0, _h.Broker.Statistics.RetainedMessages);
    }

    [Fact]
    public void The_retained_quota_refuses_what_goes_over_it()
    {
        _h.Hooks.Authenticate = _ => ConnectDecision.Accept("dev", new ClientLimits(0, 0, 2, 1000, 100));
        var pub = _h.Connect("pub");
        pub.Publish("r/1", retain: true, qos: 1);
        pub.Publish("r/2", retain: true, qos: 1);
        pub.Publish("r/1", "replaced", retain: true, qos: 1); // replacing its own costs nothing
        pub.Publish("r/3", retain: true, qos: 1);
        pub.Publish("r/4", new string('x', 2000), retain: true, qos: 1);
        Assert.Equal(
            [ReasonCode.NoMatchingSubscribers, ReasonCode.NoMatchingSubscribers, ReasonCode.NoMatchingSubscribers, ReasonCode.QuotaExceeded, ReasonCode.QuotaExceeded],
            pub.AcksOf(PacketType.PubAck).Select(a => a.ReasonCode));
        Assert.Equal(2, _h.Broker.Statistics.RetainedMessages);
    }

    // ---- wills ----

    static WillMessage Will(string payload = "gone", uint delay = 0) => new() { Topic = "wills", Payload = System.Text.Encoding.UTF8.GetBytes(payload), QoS = 1, DelayInterval = delay };

    [Theory]
    [InlineData(DisconnectKind.ConnectionLost)]
    [InlineData(DisconnectKind.KeepAliveTimeout)]
    [InlineData(DisconnectKind.ProtocolError)]
    public void A_will_is_published_when_the_connection_ends_abnormally(DisconnectKind kind)
    {
        var watcher = _h.Connect("w");
        watcher.Subscribe("wills", qos: 1);
        _h.Connect("dev", MqttVersion.V311, will: Will()).Lose(kind);
        Assert.Equal(["gone"], watcher.Payloads);
    }

    [Fact]
    public void A_normal_disconnect_publishes_no_will_and_disconnect_with_will_does()
    {
        var watcher = _h.Connect("w");
        watcher.Subscribe("wills");
        _h.Connect("a", will: Will("a")).Disconnect();
        _h.Connect("b", will: Will("b")).Disconnect(ReasonCode.DisconnectWithWill);
        Assert.Equal(["b"], watcher.Payloads);
    }

    [Fact]
    public void A_take_over_publishes_the_old_connections_will()
    {
        var watcher = _h.Connect("w");
        watcher.Subscribe("wills");
        _h.Connect("dev", MqttVersion.V311, will: Will("first"));
        _h.Connect("dev", MqttVersion.V311);
        Assert.Equal(["first"], watcher.Payloads);
    }

    [Fact]
    public void A_delayed_will_waits_and_a_reconnect_in_time_cancels_it()
    {
        var watcher = _h.Connect("w");
        watcher.Subscribe("wills");
        _h.Connect("dev", clean: false, expiry: 100, will: Will("late", delay: 10)).Lose();
        _h.Time.Advance(TimeSpan.FromSeconds(5));
        Assert.Empty(watcher.Payloads);
        _h.Connect("dev", clean: false, expiry: 100);
        _h.Time.Advance(TimeSpan.FromSeconds(60));
        Assert.Empty(watcher.Payloads);

        _h.Connect("dev2", clean: false, expiry: 100, will: Will("late2", delay: 10)).Lose();
        _h.Time.Advance(TimeSpan.FromSeconds(10));
        Assert.Equal(["late2"], watcher.Payloads);
    }

    [Fact]
    public void A_will_delay_longer_than_the_session_is_cut_to_the_session_expiry()
    {
        var watcher = _h.Connect("w");
        watcher.Subscribe("wills");
        _h.Connect("dev", clean: false, expiry: 5, will: Will("x", delay: 3600)).Lose();
        _h.Time.Advance(TimeSpan.FromSeconds(5));
        Assert.Equal(["x"], watcher.Payloads);
    }

    [Fact]
    public void A_will_the_hooks_refuse_is_dropped()
    {
        _h.Hooks.PublishCheck = (_, topic) => topic != "wills";
        var watcher = _h.Connect("w");
        watcher.Subscribe("wills");
        _h.Connect("dev", will: Will()).Lose();
        Assert.Empty(watcher.Payloads);
        Assert.Contains(("dev", "wills", DropReason.NotAuthorized), _h.Hooks.Dropped);
    }

    [Fact]
    public void Every_will_is_stored_while_its_connection_is_open_and_forgotten_once_published_or_discarded()
    {
        var legacy = _h.Connect("legacy", MqttVersion.V311, will: Will("legacy"));
        var clean = _h.Connect("clean", will: Will("clean"));
        var kept = _h.Connect("kept", clean: false, expiry: 60, will: Will("kept"));
        Assert.Equal(["clean", "kept", "legacy"], _h.Store.Load().Wills.Keys.Order());

        legacy.Lose();
        clean.Disconnect();
        kept.Disconnect(ReasonCode.DisconnectWithWill);
        Assert.Empty(_h.Store.Load().Wills);
    }

    [Fact]
    public async Task A_disconnect_that_discards_a_stored_will_closes_once_the_store_has_it()
    {
        var device = _h.Connect("dev", will: Will());
        var commit = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _h.Store.PendingCommit = commit;
        device.Handler.OnDisconnect(new DisconnectPacket { ReasonCode = ReasonCode.NormalDisconnection });
        var closed = device.Handler.OnConnectionClosedAsync(DisconnectKind.Clean).AsTask();
        Assert.False(closed.IsCompleted);

        commit.SetResult();
        await closed.WaitAsync(TimeSpan.FromSeconds(5));
        Assert.Empty(_h.Store.Load().Wills);
    }

    [Fact]
    public async Task A_restart_publishes_the_wills_of_the_connections_the_last_run_ended()
    {
        var store = new MemoryStore();
        await using (var before = new EngineHarness(store: store))
        {
            var watcher = before.Connect("w", clean: false, expiry: 3600);
            watcher.Subscribe("wills", qos: 1);
            watcher.Lose();
            before.Connect("legacy", MqttVersion.V311, will: Will("legacy"));
            before.Connect("kept", clean: false, expiry: 3600, will: Will("kept", delay: 10));
            before.Connect("gone", will: Will("gone")).Disconnect();
        }

        await using var after = new EngineHarness(store: store);
        var back = after.Connect("w", clean: false, expiry: 3600);
        Assert.Equal(["legacy"], back.Payloads);
        after.Time.Advance(TimeSpan.FromSeconds(10));
        Assert.Equal(["legacy", "kept"], back.Payloads);
        Assert.Equal(2, after.Broker.Statistics.WillsPublishedAfterRestart);
        Assert.Empty(store.Load().Wills);
    }

    // ---- expiry, limits, slow consumers ----

    [Fact]
    public void An_expired_message_is_not_delivered_from_the_queue()
    {
        var sub = _h.Connect("sub", clean: false, expiry: 600);
        sub.Subscribe("t", qos: 1);
        sub.Lose();
        var pub = _h.Connect("pub");
        pub.Publish("t", "short", qos: 1, expiry: 5);
        pub.Publish("t", "long", qos: 1, expiry: 500);
        _h.Time.Advance(TimeSpan.FromSeconds(10));
        var back = _h.Connect("sub", clean: false, expiry: 600);
        var sent = Assert.Single(back.Sink.Publishes);
        Assert.Equal("long", sent.Text);
        Assert.Equal(_h.Time.GetUtcNow().ToUnixTimeMilliseconds() + 490_000, sent.Message.ExpiresAtUnixMs);
        Assert.Contains(("sub", "t", DropReason.Expired), _h.Hooks.Dropped);
    }

    [Fact]
    public void A_full_queue_drops_the_oldest_qos0_first_then_the_oldest_and_counts_each()
    {
        _h.Hooks.Authenticate = _ => ConnectDecision.Accept(null, new ClientLimits(0, 0, 0, 0, 3));
        var sub = _h.Connect("sub");
        sub.Subscribe("t", qos: 1);
        sub.Sink.PendingBytes = long.MaxValue; // a slow consumer: everything waits in the queue
        var pub = _h.Connect("pub");
        pub.Publish("t", "q1-a", qos: 1);
        pub.Publish("t", "q0-b", qos: 0);
        pub.Publish("t", "q1-c", qos: 1);
        pub.Publish("t", "q1-d", qos: 1); // drops q0-b
        pub.Publish("t", "q1-e", qos: 1); // drops q1-a
        pub.Publish("t", "q0-f", qos: 0); // drops itself
        Assert.Equal(3, _h.Hooks.Dropped.Count(d => d.Reason == DropReason.QueueFull));
        Assert.Equal(3, _h.Broker.Statistics.MessagesDropped);

        sub.Sink.PendingBytes = 0;
        sub.Handler.OnSendQueueDrained();
        Assert.Equal(["q1-c", "q1-d", "q1-e"], sub.Payloads);
    }

    [Fact]
    public void A_congested_connection_is_handed_more_once_its_write_queue_drains()
    {
        var sub = _h.Connect("sub");
        sub.Subscribe("t");
        sub.Sink.PendingBytes = _h.Options.MaxPendingBytesPerConnection + 1;
        _h.Connect("pub").Publish("t", "held");
        Assert.Empty(sub.Sink.Publishes);
        sub.Sink.PendingBytes = 0;
        _h.Time.Advance(TimeSpan.FromMilliseconds(50)); // the engine looks again on its own
        Assert.Equal(["held"], sub.Payloads);
    }

    [Fact]
    public void A_message_larger_than_the_clients_maximum_is_dropped_for_that_client_only()
    {
        var small = _h.Connect("small");
        small.Sink.MaxPayload = 4;
        small.Subscribe("t", qos: 1);
        var big = _h.Connect("big");
        big.Subscribe("t", qos: 1);
        _h.Connect("pub").Publish("t", "0123456789", qos: 1);
        Assert.Empty(small.Sink.Publishes);
        Assert.Single(big.Sink.Publishes);
        Assert.Contains(("small", "t", DropReason.TooLarge), _h.Hooks.Dropped);
    }

    [Fact]
    public void The_publish_rate_limit_slows_reading_instead_of_dropping()
    {
        _h.Hooks.Authenticate = _ => ConnectDecision.Accept("dev", new ClientLimits(10, 0, 0, 0, 100));
        var pub = _h.Connect("pub");
        for (var i = 0; i < 10; i++)
        {
            pub.Publish("t");
        }

        Assert.Equal(TimeSpan.Zero, pub.Handler.ReadDelay);
        pub.Publish("t");
        Assert.Equal(TimeSpan.FromMilliseconds(100), pub.Handler.ReadDelay);
        _h.Time.Advance(TimeSpan.FromSeconds(1));
        pub.Publish("t");
        Assert.Equal(TimeSpan.Zero, pub.Handler.ReadDelay);
    }

    // ---- host operations ----

    [Fact]
    public void DisconnectWhere_ends_matching_connections_now_with_their_wills()
    {
        var watcher = _h.Connect("w");
        watcher.Subscribe("wills");
        _h.Hooks.Authenticate = c => ConnectDecision.Accept(c.ClientId.StartsWith("devA", StringComparison.Ordinal) ? "devA" : "other", ClientLimits.Unlimited);
        var a = _h.Connect("devA-1", will: Will("a"));
        var b = _h.Connect("devB-1");
        Assert.Equal(1, _h.Broker.DisconnectWhere(c => c.Identity == "devA", ReasonCode.AdministrativeAction));
        Assert.Equal(ReasonCode.AdministrativeAction, a.Sink.ClosedWith);
        Assert.Null(b.Sink.ClosedWith);
        Assert.Equal(["a"], watcher.Payloads);
    }

    [Fact]
    public async Task Stop_closes_every_connection_with_server_shutting_down()
    {
        var a = _h.Connect("a", clean: false, expiry: 60);
        await _h.Broker.StopAsync(CancellationToken.None);
        Assert.Equal(ReasonCode.ServerShuttingDown, a.Sink.ClosedWith);
        Assert.Equal(0, _h.Broker.Statistics.ConnectedClients);
        Assert.True(_h.Store.HasSession("a"));
    }

    [Fact]
    public void In_process_clients_receive_on_the_publishers_thread_and_publish_through_the_same_routing()
    {
        var received = new List<string>();
        using var local = _h.Broker.ConnectLocal("server", [new TopicSubscription("+/telemetry", 0)], m => received.Add(m.Topic));
        var device = _h.Connect("dev1");
        device.Subscribe("dev1/commands", qos: 1);
        device.Publish("dev1/telemetry", "{\"light\": 1}");
        Assert.Equal(["dev1/telemetry"], received);

        local.Publish(new ApplicationMessage { Topic = "dev1/commands", Payload = "{\"led_on\": true}"u8.ToArray(), QoS = 1 });
        var command = Assert.Single(device.Sink.Publishes);
        Assert.Equal("server", command.Message.SenderClientId);

        local.Dispose();
        device.Publish("dev1/telemetry");
        Assert.Single(received);
    }

    [Fact]
    public void An_in_process_receiver_may_publish_from_inside_its_callback()
    {
        var device = _h.Connect("dev1");
        device.Subscribe("dev1/commands");
        LocalClient? server = null;
        server = _h.Broker.ConnectLocal("server", [new TopicSubscription("+/telemetry", 0)],
            m => server!.Publish(new ApplicationMessage { Topic = "dev1/commands", Payload = "{}"u8.ToArray() }));
        device.Publish("dev1/telemetry");
        device.Publish("dev1/telemetry");
        Assert.Equal(2, device.Sink.Publishes.Count);
        server.Dispose();
    }

    // ---- restart ----

    [Fact]
    public async Task A_restart_restores_sessions_queued_and_in_flight_messages_retained_and_inbound_qos2()
    {
        var store = new MemoryStore();
        await using (var before = new EngineHarness(store: store))
        {
            var sub = before.Connect("sub", clean: false, expiry: 3600);
            sub.Subscribe("t", qos: 2, identifier: 7);
            var pub = before.Connect("pub", clean: false, expiry: 3600);
            pub.Publish("t", "inflight", qos: 1);
            sub.Lose();
            pub.Ack(PacketType.PubRel, pub.Publish("t", "queued", qos: 2));
            pub.Publish("status", "on", qos: 1, retain: true);
            pub.Publish("t", "half-done", qos: 2); // PUBREC sent, PUBREL never comes
        }

        await using var after = new EngineHarness(store: store);
        Assert.Equal(2, after.Broker.Statistics.Sessions);
        Assert.Equal(1, after.Broker.Statistics.RetainedMessages);

        var back = after.Connect("sub", clean: false, expiry: 3600);
        Assert.True(back.ConnAck.SessionPresent);
        var sent = back.Sink.Publishes;
        Assert.Equal(["inflight", "queued", "half-done"], sent.Select(p => p.Text));
        Assert.True(sent[0].Dup);
        Assert.Equal([7u], sent[1].SubscriptionIdentifiers);

        // The publisher's unfinished QoS 2 id survived: a resend is acknowledged but not delivered again.
        var pub2 = after.Connect("pub", clean: false, expiry: 3600);
        var pendingId = store.Load().InboundQoS2["pub"].Single();
        pub2.Publish("t", "half-done", qos: 2, packetId: pendingId, dup: true);
        Assert.Equal(3, back.Sink.Publishes.Count);

        // New message ids continue above the restored ones.
        after.Connect("pub3").Publish("t", "fresh", qos: 1);
        Assert.Equal(4, back.Sink.Publishes.Count);
    }

    [Fact]
    public async Task Sessions_and_retained_messages_survive_a_restart_on_the_file_store()
    {
        using var directory = new Nightlight.Tests.Support.TempDirectory("engine-restart");
        await using (var store = new FileSessionStore(directory.Path, null, NullLogger.Instance))
        {
            await using var before = new EngineHarness(store: store);
            var sub = before.Connect("sub", MqttVersion.V311, clean: false);
            sub.Subscribe("dev1/commands", qos: 1);
            sub.Lose();
            var pub = before.Connect("pub", MqttVersion.V311);
            pub.Publish("dev1/commands", "a", qos: 1);
            pub.Publish("dev1/commands", "b", qos: 1);
            pub.Publish("dev1/presence", "online", qos: 1, retain: true);
            // Each PUBACK leaves only after the store made the message durable.
            Assert.True(SpinWait.SpinUntil(() => pub.AcksOf(PacketType.PubAck).Count == 3, TimeSpan.FromSeconds(10)));
        }

        await using (var reopened = new FileSessionStore(directory.Path, null, NullLogger.Instance))
        {
            await using var after = new EngineHarness(store: reopened);
            var back = after.Connect("sub", MqttVersion.V311, clean: false);
            Assert.True(back.ConnAck.SessionPresent);
            Assert.Equal(["a", "b"], back.Payloads);
            var watcher = after.Connect("w");
            watcher.Subscribe("dev1/+");
            Assert.Equal(["online"], watcher.Payloads);
        }
    }
}
