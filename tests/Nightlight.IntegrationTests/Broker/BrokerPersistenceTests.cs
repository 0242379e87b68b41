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
