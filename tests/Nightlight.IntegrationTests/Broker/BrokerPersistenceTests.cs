using Nightlight.Tests.Support;

namespace Nightlight.Tests.Broker;

/// <summary>
/// What a broker keeps in its data directory must survive kill -9: persistent sessions with their subscriptions, queued
/// and in-flight QoS 1 messages, and retained messages. A PUBACK is the broker's promise; a power cut must not break it.
/// </summary>
public abstract class BrokerPersistenceTests(BrokerKind kind) : BrokerContract(kind, Wire.V311)
{
    protected static readonly BrokerSetup Durable = new() { Durable = true };

    protected Task<WireClient> ConnectPersistentAsync(BrokerUnderTest broker, Wire wire, string clientId, bool sessionPresent) =>
        WireClient.ConnectAsync(broker.Port, wire, clientId, clean: false, properties: wire.IsV5 ? new Props().Add(Prop.SessionExpiry, 3600) : null,
            sessionPresent: sessionPresent);

    protected async Task KillAndRestartAsync(BrokerUnderTest broker)
    {
        if (Kind == BrokerKind.Mosquitto)
        {
            // Mosquitto writes its database in its main loop after the change that was acknowledged; give it that turn.
            await Task.Delay(300);
        }
        await broker.KillAsync();
        await broker.RestartAsync();
    }

    [Theory]
    [InlineData(4)]
    [InlineData(5)]
    public async Task A_persistent_session_and_its_queued_qos_1_messages_survive_kill_9(int version)
    {
        var wire = new Wire(version);
        await using var broker = await StartBrokerAsync(Durable);
        await using (var sub = await ConnectPersistentAsync(broker, wire, "sleeper", sessionPresent: false))
        {
            await sub.SubscribeAsync(1, "x/#", 1);
            await sub.DisconnectAsync();
        }
        await using (var pub = await WireClient.ConnectAsync(broker.Port, wire, "pub"))
        {
            for (var i = 1; i <= 3; i++)
            {
                await pub.PublishAsync($"x/{i}", $"hello {i}", 1, packetId: i);
            }
        }

        await KillAndRestartAsync(broker);

        await using var back = await ConnectPersistentAsync(broker, wire, "sleeper", sessionPresent: true);
        for (var i = 1; i <= 3; i++)
        {
            await back.AcknowledgeAsync(await back.ExpectPublishAsync($"x/{i}", $"hello {i}", 1));
        }
        await back.ExpectNothingAsync(Quiet);
        // The subscription itself came back too: new messages still reach the session.
        await using var later = await WireClient.ConnectAsync(broker.Port, wire, "later");
        await later.PublishAsync("x/4", "after the restart", 1, packetId: 9);
        await back.AcknowledgeAsync(await back.ExpectPublishAsync("x/4", "after the restart", 1));
    }

    [Fact]
    public async Task Retained_messages_survive_kill_9_and_a_cleared_one_stays_cleared()
    {
        await using var broker = await StartBrokerAsync(Durable);
        await using (var pub = await ConnectAsync(broker, "pub"))
        {
            await pub.PublishAsync("lamp/state", "on", 1, packetId: 1, retain: true);
            await pub.PublishAsync("lamp/gone", "soon cleared", 1, packetId: 2, retain: true);
            await pub.PublishAsync("lamp/gone", "", 1, packetId: 3, retain: true);
        }
        await KillAndRestartAsync(broker);
        await using var sub = await ConnectAsync(broker, "sub");
        await sub.SubscribeAsync(1, "lamp/#", 1);
        await sub.AcknowledgeAsync(await sub.ExpectPublishAsync("lamp/state", "on", 1, retain: true));
        await sub.ExpectNothingAsync(Quiet);
    }

}

public sealed class MosquittoPersistenceTests() : BrokerPersistenceTests(BrokerKind.Mosquitto);

/// <summary>
/// Our broker, and the scenarios where Mosquitto 2.0.11 legitimately differs (a feature it lacks, a persistence it does
/// not have); those run only here, since CI runs every test it has and skips none.
/// </summary>
public sealed class NightlightPersistenceTests() : BrokerPersistenceTests(BrokerKind.Nightlight)
{
    [Fact]
    public async Task A_message_in_flight_is_sent_again_after_kill_9()
    {
        await using var broker = await StartBrokerAsync(Durable);
        int id;
        await using (var sub = await ConnectPersistentAsync(broker, Wire, "unlucky", sessionPresent: false))
        {
            await sub.SubscribeAsync(1, "y/#", 1);
            await using var pub = await ConnectAsync(broker, "pub");
            await pub.PublishAsync("y/1", "in flight", 1, packetId: 1);
            // Received, not acknowledged, when the broker dies.
            id = (await sub.ExpectPublishAsync("y/1", "in flight", 1)).PacketId;
            await KillAndRestartAsync(broker);
        }
        await using var back = await ConnectPersistentAsync(broker, Wire, "unlucky", sessionPresent: true);
        var again = await back.ExpectPublishAsync("y/1", "in flight", 1);
        Assert.True(again.Dup && again.PacketId == id, $"resent with DUP and packet id {id}: {again}");
        await back.AcknowledgeAsync(again);
        await back.ExpectNothingAsync(Quiet);
    }

    /// <summary>
    /// MQTT 5 publishes a will when its delay runs out or its session ends. A broker killed while the client was
    /// connected ended that connection too, so the will must still come once the broker is back (Mosquitto 2.0.11
    /// never publishes it).
    /// </summary>
    [Fact]
    public async Task A_delayed_will_is_published_after_kill_9_when_its_delay_runs_out()
    {
        await using var broker = await StartBrokerAsync(Durable);
        // A persistent watcher gets the will whether it is published before or after the watcher is back.
        await using (var watcher = await ConnectPersistentAsync(broker, Wire.V5, "watcher", sessionPresent: false))
        {
            await watcher.SubscribeAsync(1, "will/#", 1);
            await watcher.DisconnectAsync();
        }
        Task<WireClient> ConnectWithWillAsync(string clientId, int delay, bool clean, bool sessionPresent) =>
            WireClient.ConnectAsync(broker.Port, Wire.V5, clientId, clean, will: new Will($"will/{clientId}", WireClient.Utf8($"{clientId} is gone"), Qos: 1,
                Properties: new Props().Add(Prop.WillDelay, delay)), properties: new Props().Add(Prop.SessionExpiry, 60), sessionPresent: sessionPresent);
        await using (var mortal = await ConnectWithWillAsync("mortal", 3, clean: true, sessionPresent: false))
        await using (var blinker = await ConnectWithWillAsync("blinker", 8, clean: true, sessionPresent: false))
        {
            // Its PUBACK promises that this message, and what the broker was told before it, is stored.
            await mortal.PublishAsync("will/hello", "mortal is here", 1, packetId: 1);
            await KillAndRestartAsync(broker);
        }

        // Back within its delay, the blinker keeps its will from being published, as it would without a restart.
        await using var blinkerBack = await ConnectWithWillAsync("blinker", 8, clean: false, sessionPresent: true);
        await using var back = await ConnectPersistentAsync(broker, Wire.V5, "watcher", sessionPresent: true);
        await back.AcknowledgeAsync(await back.ExpectPublishAsync("will/hello", "mortal is here", 1));
        await back.AcknowledgeAsync(await back.ExpectPublishAsync("will/mortal", "mortal is gone", 1, timeout: TimeSpan.FromSeconds(20)));
        await back.ExpectNothingAsync(TimeSpan.FromSeconds(8));
    }

    /// <summary>
    /// CONNACK promises a new persistent session (and, in 5, its delayed will) as PUBACK promises a message: a kill -9
    /// right after it must not lose them. The store's writer is kept busy with a stream of QoS 1 messages to a stored
    /// session, so a CONNECT's change waits behind an fsync as on a loaded broker, and the kill lands while CONNACKs are
    /// coming. Every client that got a CONNACK must find its session after the restart; in 5 its will must come.
    /// </summary>
    [Theory]
    [InlineData(4)]
    [InlineData(5)]
    public async Task A_new_persistent_session_and_its_delayed_will_survive_kill_9_right_after_connack(int version)
    {
        var wire = new Wire(version);
        const int Clients = 24;
        await using var broker = await StartBrokerAsync(Durable);
        if (wire.IsV5)
        {
            await using var watcher = await ConnectPersistentAsync(broker, Wire.V5, "watcher", sessionPresent: false);
            await watcher.SubscribeAsync(1, "will/#", 1);
            await watcher.DisconnectAsync();
        }
        var load = await StoreLoad.StartAsync(broker);

        var fresh = new List<WireClient>();
        for (var i = 0; i < Clients; i++)
        {
            fresh.Add(await WireClient.OpenAsync(broker.Port, wire, $"fresh{i}"));
        }
        var connects = fresh.Select((client, i) => client.SendAsync(wire.Connect($"fresh{i}", clean: wire.IsV5, properties: wire.IsV5 ? new Props().Add(Prop.SessionExpiry, 300) : null,
            will: wire.IsV5 ? new Will($"will/fresh{i}", WireClient.Utf8($"fresh{i} is gone"), Qos: 1, Properties: new Props().Add(Prop.WillDelay, 2)) : null)));
        await Task.WhenAll(connects);
        var connacks = fresh.Select(client => client.NextAsync(TimeSpan.FromSeconds(30))).ToList();
        var pending = connacks.ToList();
        while (pending.Count > Clients / 2)
        {
            pending.Remove(await Task.WhenAny(pending));
        }
        await broker.KillAsync();
        await load.DisposeAsync();

        // A CONNACK read after the kill was still sent before it: a promise too. The rest fail when their connection closes.
        await Task.WhenAll(connacks).ContinueWith(_ => { }, TaskScheduler.Default);
        var promised = Enumerable.Range(0, Clients).Where(i => connacks[i] is { IsCompletedSuccessfully: true, Result: { Type: PacketType.ConnAck, ReasonCode: 0 } }).ToList();
        foreach (var client in fresh)
        {
            await client.DisposeAsync();
        }
        Assert.True(promised.Count >= Clients / 2, $"only {promised.Count} CONNACKs before the kill");
        await broker.RestartAsync();

        if (wire.IsV5)
        {
            await using var back = await ConnectPersistentAsync(broker, Wire.V5, "watcher", sessionPresent: true);
            // Clients whose CONNACK the kill cut off may have left a will too; only the promised ones must come.
            var missing = promised.Select(i => $"will/fresh{i}").ToHashSet();
            while (missing.Count > 0 && await back.TryNextAsync(TimeSpan.FromSeconds(10)) is { } will)
            {
                await back.AcknowledgeAsync(will);
                missing.Remove(will.Topic);
            }
            Assert.True(missing.Count == 0, $"{missing.Count} of {promised.Count} delayed wills acknowledged with CONNACK were lost by kill -9: {string.Join(", ", missing)}");
        }
        var lost = new List<string>();
        foreach (var i in promised)
        {
            await using var client = await WireClient.OpenAsync(broker.Port, wire, $"fresh{i}");
            var connack = await client.ConnectAsync(wire.Connect($"fresh{i}", clean: false, properties: wire.IsV5 ? new Props().Add(Prop.SessionExpiry, 300) : null));
            if (connack is not { ReasonCode: 0, SessionPresent: true })
            {
                lost.Add($"fresh{i}");
            }
        }
        Assert.True(lost.Count == 0, $"{lost.Count} of {promised.Count} sessions acknowledged with CONNACK were lost by kill -9: {string.Join(", ", lost)}");
    }

    /// <summary>
    /// SUBACK promises the subscription as CONNACK promises the session: a kill -9 right after it must not lose it. Under
    /// the same store load, 24 stored sessions subscribe at once and the kill lands while SUBACKs are coming; after the
    /// restart a QoS 1 message to every acknowledged filter must reach its session.
    /// </summary>
    [Theory]
    [InlineData(4)]
    [InlineData(5)]
    public async Task A_subscription_survives_kill_9_right_after_suback(int version)
    {
        var wire = new Wire(version);
        const int Clients = 24;
        await using var broker = await StartBrokerAsync(Durable);
        var readers = new List<WireClient>();
        for (var i = 0; i < Clients; i++)
        {
            readers.Add(await ConnectPersistentAsync(broker, wire, $"reader{i}", sessionPresent: false));
        }
        var load = await StoreLoad.StartAsync(broker);
        await Task.WhenAll(readers.Select((reader, i) => reader.SendAsync(wire.Subscribe(1, $"news/reader{i}", 1))));
        var subacks = await KillWhileRepliesComeAsync(broker, load, readers);
        var promised = Enumerable.Range(0, Clients).Where(i => subacks[i] is { Type: PacketType.SubAck, Codes: [1] }).ToList();
        Assert.True(promised.Count >= Clients / 2, $"only {promised.Count} SUBACKs before the kill");
        await broker.RestartAsync();

        await using (var publisher = await WireClient.ConnectAsync(broker.Port, wire, "publisher"))
        {
            foreach (var i in promised)
            {
                await publisher.PublishAsync($"news/reader{i}", $"for reader{i}", 1, packetId: i + 1);
            }
        }
        var lost = new List<string>();
        foreach (var i in promised)
        {
            await using var back = await ConnectPersistentAsync(broker, wire, $"reader{i}", sessionPresent: true);
            if (await back.TryNextAsync(TimeSpan.FromSeconds(3)) is not { Type: PacketType.Publish } message || message.PayloadText != $"for reader{i}")
            {
                lost.Add($"reader{i}");
            }
        }
        Assert.True(lost.Count == 0, $"{lost.Count} of {promised.Count} subscriptions acknowledged with SUBACK were lost by kill -9: {string.Join(", ", lost)}");
    }

    /// <summary>
    /// UNSUBACK promises the subscription is gone: after a kill -9 right after it, a message to the filter must not reach
    /// the session. The subscriptions are made durable first (a CONNACK of a stored session waits for the store).
    /// </summary>
    [Theory]
    [InlineData(4)]
    [InlineData(5)]
    public async Task An_unsubscribe_survives_kill_9_right_after_unsuback(int version)
    {
        var wire = new Wire(version);
        const int Clients = 24;
        await using var broker = await StartBrokerAsync(Durable);
        for (var i = 0; i < Clients; i++)
        {
            await using var first = await ConnectPersistentAsync(broker, wire, $"quitter{i}", sessionPresent: false);
            await first.SubscribeAsync(1, $"news/quitter{i}", 1);
            await first.DisconnectAsync();
        }
        var quitters = new List<WireClient>();
        for (var i = 0; i < Clients; i++)
        {
            quitters.Add(await ConnectPersistentAsync(broker, wire, $"quitter{i}", sessionPresent: true));
        }
        var load = await StoreLoad.StartAsync(broker);
        await Task.WhenAll(quitters.Select((quitter, i) => quitter.SendAsync(wire.Unsubscribe(2, $"news/quitter{i}"))));
        var unsubacks = await KillWhileRepliesComeAsync(broker, load, quitters);
        var promised = Enumerable.Range(0, Clients).Where(i => unsubacks[i] is { Type: PacketType.UnsubAck, PacketId: 2 }).ToList();
        Assert.True(promised.Count >= Clients / 2, $"only {promised.Count} UNSUBACKs before the kill");
        await broker.RestartAsync();

        await using (var publisher = await WireClient.ConnectAsync(broker.Port, wire, "publisher"))
        {
            foreach (var i in promised)
            {
                await publisher.PublishAsync($"news/quitter{i}", $"for quitter{i}", 1, packetId: i + 1);
            }
        }
        var backs = new List<WireClient>();
        foreach (var i in promised)
        {
            backs.Add(await ConnectPersistentAsync(broker, wire, $"quitter{i}", sessionPresent: true));
        }
        var received = await Task.WhenAll(backs.Select(back => back.TryNextAsync(TimeSpan.FromSeconds(3))));
        foreach (var back in backs)
        {
            await back.DisposeAsync();
        }
        var revived = promised.Where((_, n) => received[n] is not null).Select(i => $"quitter{i}").ToList();
        Assert.True(revived.Count == 0, $"{revived.Count} of {promised.Count} subscriptions ended with UNSUBACK came back after kill -9: {string.Join(", ", revived)}");
    }

    /// <summary>
    /// The will is session state (MQTT 5 §4.1): a kill -9 ends every connection without DISCONNECT, so once the broker is
    /// back the wills of the clients connected then must come, with no delay asked for at once, from a clean session as
    /// from a persistent one, and only once: a second restart does not send them again.
    /// </summary>
    [Theory]
    [InlineData(4)]
    [InlineData(5)]
    public async Task A_will_is_published_after_kill_9_ended_its_connection(int version)
    {
        var wire = new Wire(version);
        await using var broker = await StartBrokerAsync(Durable);
        await using (var watcher = await ConnectPersistentAsync(broker, wire, "watcher", sessionPresent: false))
        {
            await watcher.SubscribeAsync(1, "will/#", 1);
            await watcher.DisconnectAsync();
        }
        // CONNACK is the promise: the will is stored before it.
        await using (var plain = await WireClient.ConnectAsync(broker.Port, wire, "plain", clean: true, will: DeviceWill("plain")))
        await using (var kept = await WireClient.ConnectAsync(broker.Port, wire, "kept", clean: false, will: DeviceWill("kept"),
            properties: wire.IsV5 ? new Props().Add(Prop.SessionExpiry, 3600) : null))
        {
            await broker.KillAsync();
        }
        await broker.RestartAsync();

        await using (var back = await ConnectPersistentAsync(broker, wire, "watcher", sessionPresent: true))
        {
            var wills = new List<string>();
            while (wills.Count < 2 && await back.TryNextAsync(TimeSpan.FromSeconds(10)) is { } will)
            {
                await back.AcknowledgeAsync(will);
                wills.Add($"{will.Topic}: {will.PayloadText}");
            }
            Assert.Equal(["will/kept: kept is gone", "will/plain: plain is gone"], wills.Order());
            await back.ExpectNothingAsync(TimeSpan.FromSeconds(1));
            await back.DisconnectAsync();
        }
        await using (var later = await WireClient.ConnectAsync(broker.Port, wire, "later"))
        {
            // A subscriber that comes after the restart finds them retained, as the last word of each client.
            await later.SubscribeAsync(1, "will/#", 0);
            var retained = await later.NextManyAsync(2);
            Assert.Equal(["will/kept", "will/plain"], retained.Where(p => p.Retain).Select(p => p.Topic).Order());
        }

        // The watcher's CONNACK waits for the store, so its acknowledgements and the wills' removal are durable now.
        await using (var watcher = await ConnectPersistentAsync(broker, wire, "watcher", sessionPresent: true))
        {
            await broker.KillAsync();
        }
        await broker.RestartAsync();
        await using var again = await ConnectPersistentAsync(broker, wire, "watcher", sessionPresent: true);
        await again.ExpectNothingAsync(TimeSpan.FromSeconds(2));
    }

    /// <summary>
    /// A DISCONNECT discards the will (MQTT-3.1.2-10): once the broker has closed that connection, a kill -9 must not
    /// bring the will back. The clients leave together under store load, so the will's removal waits for the writer.
    /// </summary>
    [Theory]
    [InlineData(4)]
    [InlineData(5)]
    public async Task A_will_discarded_by_disconnect_stays_discarded_after_kill_9(int version)
    {
        var wire = new Wire(version);
        const int Clients = 12;
        await using var broker = await StartBrokerAsync(Durable);
        await using (var watcher = await ConnectPersistentAsync(broker, wire, "watcher", sessionPresent: false))
        {
            await watcher.SubscribeAsync(1, "will/#", 1);
            await watcher.DisconnectAsync();
        }
        var leavers = new List<WireClient>();
        for (var i = 0; i < Clients; i++)
        {
            // Every other one keeps its session: a DISCONNECT discards the will either way.
            var persistent = i % 2 == 1;
            leavers.Add(await WireClient.ConnectAsync(broker.Port, wire, $"leaver{i}", clean: !persistent, will: DeviceWill($"leaver{i}"),
                properties: wire.IsV5 && persistent ? new Props().Add(Prop.SessionExpiry, 3600) : null));
        }
        var load = await StoreLoad.StartAsync(broker);
        await Task.WhenAll(leavers.Select(leaver => leaver.DisconnectAsync()));
        await broker.KillAsync();
        await load.DisposeAsync();
        foreach (var leaver in leavers)
        {
            await leaver.DisposeAsync();
        }
        await broker.RestartAsync();

        await using var back = await ConnectPersistentAsync(broker, wire, "watcher", sessionPresent: true);
        await back.ExpectNothingAsync(TimeSpan.FromSeconds(3));
    }

    /// <summary>A device's last word, as Nightlight devices leave it: retained, QoS 1, no delay.</summary>
    static Will DeviceWill(string clientId) => new($"will/{clientId}", WireClient.Utf8($"{clientId} is gone"), Qos: 1, Retain: true);

    /// <summary>
    /// Reads the next packet of every client, kills the broker once half of them came (the rest are being sent), and
    /// returns each client's packet, or null when the kill cut it off. A packet read after the kill was still sent before it.
    /// </summary>
    static async Task<List<Packet?>> KillWhileRepliesComeAsync(BrokerUnderTest broker, StoreLoad load, List<WireClient> clients)
    {
        var replies = clients.Select(client => client.NextAsync(TimeSpan.FromSeconds(30))).ToList();
        var pending = replies.ToList();
        while (pending.Count > replies.Count / 2)
        {
            pending.Remove(await Task.WhenAny(pending));
        }
        await broker.KillAsync();
        await load.DisposeAsync();
        await Task.WhenAll(replies).ContinueWith(_ => { }, TaskScheduler.Default);
        foreach (var client in clients)
        {
            await client.DisposeAsync();
        }
        return [.. replies.Select(reply => reply.IsCompletedSuccessfully ? reply.Result : null)];
    }

    /// <summary>
    /// Keeps the store's writer busy with a stream of QoS 1 messages to a stored session, so a change waits behind an
    /// fsync as on a loaded broker. Dispose after the kill.
    /// </summary>
    sealed class StoreLoad : IAsyncDisposable
    {
        readonly WireClient _loader;
        readonly CancellationTokenSource _stop = new();
        readonly Task _load;

        StoreLoad(WireClient loader)
        {
            _loader = loader;
            _load = Task.Run(async () =>
            {
                // 3.1.1 has no receive maximum: twenty in flight keep a batch waiting for the writer at all times.
                while (!_stop.IsCancellationRequested)
                {
                    await loader.SendAsync([.. Enumerable.Range(1, 20).SelectMany(i => Wire.V311.Publish("load/x", new string('l', 500), 1, packetId: i))]);
                    await loader.NextManyAsync(20);
                }
            });
        }

        public static async Task<StoreLoad> StartAsync(BrokerUnderTest broker)
        {
            await using (var sink = await WireClient.ConnectAsync(broker.Port, Wire.V311, "sink", clean: false))
            {
                await sink.SubscribeAsync(1, "load/#", 1);
                await sink.DisconnectAsync();
            }
            var load = new StoreLoad(await WireClient.ConnectAsync(broker.Port, Wire.V311, "loader"));
            await Task.Delay(500);
            return load;
        }

        public async ValueTask DisposeAsync()
        {
            _stop.Cancel();
            try
            {
                await _load;
            }
            catch (Exception)
            {
                // The loader's connection died with the broker.
            }
            await _loader.DisposeAsync();
            _stop.Dispose();
        }
    }

    [Fact]
    public async Task A_clean_session_leaves_nothing_behind_after_kill_9()
    {
        await using var broker = await StartBrokerAsync(Durable);
        await using (var client = await ConnectPersistentAsync(broker, Wire, "ephemeral", sessionPresent: false))
        {
            await client.SubscribeAsync(1, "z/#", 1);
            await client.DisconnectAsync();
        }
        // Clean session ends the stored session; the restart must not bring it back.
        await using (var clean = await ConnectAsync(broker, "ephemeral", clean: true))
        {
            await clean.DisconnectAsync();
        }
        await KillAndRestartAsync(broker);
        await using var back = await ConnectPersistentAsync(broker, Wire, "ephemeral", sessionPresent: false);
    }
}
