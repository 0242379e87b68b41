using System.Diagnostics;
using System.Text;
using MQTTnet.Formatter;
using Nightlight.Protocol;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>
/// Hostile clients against the real <c>nightlight broker</c>: each is shut out or slowed down, and a well-behaved
/// device is served the whole time.
/// </summary>
public class HostileInputTests
{
    /// <summary>A well-behaved device round trip: publish and receive its own message back.</summary>
    static async Task AssertServedAsync(int port, string id)
    {
        await using var device = await MqttProbe.ConnectAsync(port, MqttProtocolVersion.V311, Topics.DeviceClientId(id));
        await device.SubscribeAsync($"{id}/#");
        var payload = $"{{\"light\": {Random.Shared.Next(1000)}}}";
        await device.PublishAsync(Topics.Telemetry(id), payload);
        await device.WaitForAsync(m => m.Topic == Topics.Telemetry(id) && m.Payload == payload);
    }

    [Fact]
    public async Task A_packet_over_the_maximum_size_closes_only_that_connection()
    {
        var (broker, port, _) = await NightlightCli.StartBrokerAsync();
        await using (broker)
        {
            await using var watcher = await MqttProbe.ConnectAsync(port);
            await watcher.SubscribeAsync("big/#");

            // Just under the 256 KiB default passes.
            await using (var fine = await RawMqtt.OpenAsync(port))
            {
                Assert.Equal(0, await fine.ConnectAsync("big-ok"));
                await fine.SendAsync(Packets.Publish("big/ok", new byte[200 * 1024]));
                await watcher.WaitForAsync(m => m.Topic == "big/ok");
            }
            // Over it: closed after the header, before the rest is even sent.
            await using (var big = await RawMqtt.OpenAsync(port))
            {
                Assert.Equal(0, await big.ConnectAsync("big-no"));
                var packet = Packets.Publish("big/no", new byte[300 * 1024]);
                await big.SendAsync(packet[..1024]);
                Assert.True(await big.ClosedWithinAsync(TimeSpan.FromSeconds(20)));
            }
            // A length field claiming 256 MB, and one that never ends.
            foreach (var header in new byte[][] { [0x30, 0xFF, 0xFF, 0xFF, 0x7F], [0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01] })
            {
                await using var liar = await RawMqtt.OpenAsync(port);
                Assert.Equal(0, await liar.ConnectAsync("liar-" + header.Length));
                await liar.SendAsync(header);
                Assert.True(await liar.ClosedWithinAsync(TimeSpan.FromSeconds(20)));
            }
            await broker.WaitForErrorLineAsync("exceeds Broker:MaxPacketSize 262144");
            await broker.WaitForErrorLineAsync("remaining length longer than four bytes");
            Assert.DoesNotContain(watcher.Received, m => m.Topic == "big/no");
            await AssertServedAsync(port, "bystander");
        }
    }

    [Fact]
    public async Task Half_open_connections_are_closed_after_the_read_timeout()
    {
        var (broker, port, _) = await NightlightCli.StartBrokerAsync();
        await using (broker)
        {
            broker.Signal("INT");
            await broker.WaitForExitAsync(TimeSpan.FromSeconds(20));
        }
        // Started again with a short timeout (configuration key Broker:ReadTimeout).
        var mqtt = Ports.Free();
        await using var quick = ProcessRunner.Start("dotnet", [NightlightCli.Dll, "broker", "--mqtt-port", mqtt.ToString(), "--http-port", Ports.Free().ToString()],
            new Dictionary<string, string> { ["NO_COLOR"] = "1", ["NIGHTLIGHT_Broker__ReadTimeout"] = "2s" });
        await quick.WaitForErrorLineAsync("MQTT broker listening", TimeSpan.FromSeconds(30));

        await using var silent = await RawMqtt.OpenAsync(mqtt);
        await using var halfConnect = await RawMqtt.OpenAsync(mqtt);
        await halfConnect.SendAsync(Packets.Connect311("half")[..6]);
        await using var halfPublish = await RawMqtt.OpenAsync(mqtt);
        Assert.Equal(0, await halfPublish.ConnectAsync("halfpub"));
        await halfPublish.SendAsync(Packets.Publish("half/x", new byte[100])[..20]);
        await using var wrongFirst = await RawMqtt.OpenAsync(mqtt);
        await wrongFirst.SendAsync(Packets.Subscribe("#"));

        Assert.True(await silent.ClosedWithinAsync(TimeSpan.FromSeconds(20)));
        Assert.True(await halfConnect.ClosedWithinAsync(TimeSpan.FromSeconds(20)));
        Assert.True(await halfPublish.ClosedWithinAsync(TimeSpan.FromSeconds(20)));
        Assert.True(await wrongFirst.ClosedWithinAsync(TimeSpan.FromSeconds(20)));
        await quick.WaitForErrorLineAsync("no CONNECT within 2 s (Broker:ReadTimeout)");
        await quick.WaitForErrorLineAsync("a packet was left unfinished within 2 s (Broker:ReadTimeout)");
        await quick.WaitForErrorLineAsync("first packet is Subscribe, not CONNECT");
        await AssertServedAsync(mqtt, "patient");
    }

    [Fact]
    public async Task A_client_that_hangs_up_inside_a_packet_is_closed_at_once_and_its_whole_packets_still_arrive()
    {
        // A read timeout far beyond the test's waits: only the end of the client's input can close these connections.
        var (broker, port, _) = await NightlightCli.StartBrokerWithAsync(new Dictionary<string, string> { ["NIGHTLIGHT_Broker__ReadTimeout"] = "10m" });
        await using (broker)
        {
            await using var watcher = await MqttProbe.ConnectAsync(port);
            await watcher.SubscribeAsync("cut/#");
            await using var halfConnect = await RawMqtt.OpenAsync(port);
            await halfConnect.SendAsync(Packets.Connect311("cut-connect")[..6]);
            halfConnect.CloseSending();
            await using var halfPublish = await RawMqtt.OpenAsync(port);
            Assert.Equal(0, await halfPublish.ConnectAsync("cut-publish"));
            await halfPublish.SendAsync([.. Packets.Publish("cut/whole", "{\"light\": 1}"u8.ToArray()), .. Packets.Publish("cut/half", new byte[100])[..20]]);
            halfPublish.CloseSending();

            Assert.True(await halfConnect.ClosedWithinAsync(TimeSpan.FromSeconds(20)));
            Assert.True(await halfPublish.ClosedWithinAsync(TimeSpan.FromSeconds(20)));
            await watcher.WaitForAsync(m => m.Topic == "cut/whole");
            await broker.WaitForErrorLineAsync("the client closed the connection inside a packet");
            Assert.DoesNotContain(watcher.Received, m => m.Topic == "cut/half");
            await AssertServedAsync(port, "bystander");
        }
    }

    [Fact]
    public async Task Whole_packets_sent_just_before_a_hang_up_are_handled()
    {
        // mosquitto_pub's way: PUBLISH, DISCONNECT and the end of the connection at once. Kestrel signals the hang-up
        // while those packets may still wait to be read; they must be read, not dropped.
        var (broker, port, _) = await NightlightCli.StartBrokerAsync();
        await using (broker)
        {
            await using var watcher = await MqttProbe.ConnectAsync(port);
            await watcher.SubscribeAsync("bye/#");
            const int Clients = 200;
            for (var i = 0; i < Clients; i++)
            {
                await using var raw = await RawMqtt.OpenAsync(port);
                Assert.Equal(0, await raw.ConnectAsync($"bye{i}"));
                await raw.SendAsync([.. Packets.Publish($"bye/{i}", "{\"light\": 1}"u8.ToArray()), .. Packets.Disconnect]);
                raw.CloseSending();
            }
            await watcher.WaitForAsync(m => m.Topic.StartsWith("bye/", StringComparison.Ordinal), Clients);
            Assert.DoesNotContain(broker.StderrLines, l => l.Contains("inside a packet", StringComparison.Ordinal));
        }
    }

    [Fact]
    public async Task Bad_topic_names_are_refused_and_wildcards_close_the_connection()
    {
        var (broker, port, _) = await NightlightCli.StartBrokerAsync();
        await using (broker)
        {
            await using var watcher = await MqttProbe.ConnectAsync(port);
            await watcher.SubscribeAsync("#");
            await using var raw = await RawMqtt.OpenAsync(port);
            Assert.Equal(0, await raw.ConnectAsync("topics"));
            ushort id = 1;
            foreach (var topic in new[] { "ctl\u0001x/telemetry", "esc\u001b[31m/telemetry", new string('t', 300), "$SYS/fake" })
            {
                await raw.SendAsync(Packets.Publish(topic, "{\"light\": 1}"u8.ToArray(), qos: 1, packetId: id));
                var ack = await raw.ReadPacketAsync(TimeSpan.FromSeconds(20));
                // 3.1.1 has no reason code in PUBACK: acknowledged and dropped, as Mosquitto does.
                Assert.True(ack is [0x40, 2, _, _], $"{topic}: expected PUBACK");
                id++;
            }
            await raw.SendAsync(Packets.Publish("fine/telemetry", "{\"light\": 2}"u8.ToArray()));
            await watcher.WaitForAsync(m => m.Topic == "fine/telemetry");
            Assert.Single(watcher.Received);
            // Empty levels are legal MQTT: delivered, with one warning for this client, as a leading '/' is the usual bug.
            foreach (var topic in new[] { "/lead/telemetry", "a//b", "tail/" })
            {
                await raw.SendAsync(Packets.Publish(topic, "{\"light\": 3}"u8.ToArray()));
                await watcher.WaitForAsync(m => m.Topic == topic);
            }
            await broker.WaitForErrorLineAsync("publishes on '/lead/telemetry', which has an empty level");
            Assert.Single(broker.StderrLines, l => l.Contains("which has an empty level", StringComparison.Ordinal));

            foreach (var topic in new byte[][] { "a/+/b"u8.ToArray(), "a/#"u8.ToArray(), [(byte)'a', 0, (byte)'b'] })
            {
                await using var wild = await RawMqtt.OpenAsync(port);
                Assert.Equal(0, await wild.ConnectAsync("wild"));
                await wild.SendAsync(Packets.PublishRawTopic(topic, "{}"u8.ToArray()));
                Assert.True(await wild.ClosedWithinAsync(TimeSpan.FromSeconds(20)), Encoding.UTF8.GetString(topic));
            }
            await broker.WaitForErrorLineAsync("invalid topic name (ControlCharacter)");
            await broker.WaitForErrorLineAsync("invalid topic name (TooLong)");
            await broker.WaitForErrorLineAsync("PUBLISH topic 'a/+/b' contains a wildcard");
            // Control characters reach the log escaped, never raw.
            Assert.DoesNotContain(broker.StderrLines, l => l.Contains('\u001b'));
            Assert.Equal(4, watcher.Received.Count);
            await AssertServedAsync(port, "neighbour");
        }
    }

    [Fact]
    public async Task Hostile_payloads_pass_the_broker_and_the_server_keeps_answering()
    {
        var (broker, port, _) = await NightlightCli.StartBrokerAsync();
        await using (broker)
        {
            await using var server = NightlightCli.Start("server", "--broker", $"mqtt://127.0.0.1:{port}");
            await server.WaitForErrorLineAsync("Server listening");
            await using var sender = await MqttProbe.ConnectAsync(port);
            byte[][] payloads =
            [
                "{\"light\": NaN}"u8.ToArray(), "{\"light\": Infinity}"u8.ToArray(), "{\"light\": 1e400}"u8.ToArray(),
                Encoding.UTF8.GetBytes("{\"light\": 1" + new string('0', 5000) + "}"),
                Encoding.UTF8.GetBytes(new string('[', 100_000)), [0xC0, 0x80, 0xED, 0xA0, 0x80], [],
                Encoding.UTF8.GetBytes("{\"light\": 1, \"light\": 2}"),
            ];
            foreach (var payload in payloads)
            {
                await sender.PublishAsync("evil/telemetry", payload);
            }
            await using var watcher = await MqttProbe.ConnectAsync(port);
            await watcher.SubscribeAsync("good7/commands");
            await sender.PublishAsync("good7/telemetry", "{\"light\": 900}");
            var answer = await watcher.WaitForAsync(m => m.Topic == "good7/commands");
            Assert.Equal("{\"led_on\": false}", answer[0].Payload);
            Assert.False(server.HasExited);
            Assert.False(broker.HasExited);
        }
    }

    [Fact]
    public async Task A_publish_flood_is_slowed_down_and_a_connect_flood_does_not_starve_other_devices()
    {
        var (broker, port, _) = await NightlightCli.StartBrokerAsync("--max-publish-rate", "200");
        await using (broker)
        {
            await using var server = NightlightCli.Start("server", "--broker", $"mqtt://127.0.0.1:{port}", "--quiet");
            await server.WaitForErrorLineAsync("Server listening");

            await using var flooder = await RawMqtt.OpenAsync(port);
            Assert.Equal(0, await flooder.ConnectAsync(Topics.DeviceClientId("flood")));
            var packet = Packets.Publish("flood/telemetry", "{\"light\": 1}"u8.ToArray());
            var burst = Enumerable.Repeat(packet, 50_000).SelectMany(p => p).ToArray();
            using var stop = new CancellationTokenSource();
            // The flooder writes as fast as TCP lets it; the broker reads it at 200 publishes a second.
            var flooding = Task.Run(async () =>
            {
                try
                {
                    await flooder.Stream.WriteAsync(burst, stop.Token);
                }
                catch (OperationCanceledException)
                {
                }
            });

            // A connect flood alongside: 300 connections, half of them never saying anything.
            var crowd = new List<RawMqtt>();
            for (var i = 0; i < 300; i++)
            {
                var c = await RawMqtt.OpenAsync(port);
                if (i % 2 == 0)
                {
                    await c.SendAsync(Packets.Connect311($"crowd{i}"));
                }
                crowd.Add(c);
            }

            await using var watcher = await MqttProbe.ConnectAsync(port);
            await watcher.SubscribeAsync("calm/commands");
            await watcher.SubscribeAsync("flood/commands");
            await using var calm = await MqttProbe.ConnectAsync(port, MqttProtocolVersion.V311, Topics.DeviceClientId("calm"));
            for (var i = 0; i < 5; i++)
            {
                await calm.PublishAsync("calm/telemetry", "{\"light\": 10}");
            }
            await watcher.WaitForAsync(m => m.Topic == "calm/commands", count: 5);
            await broker.WaitForErrorLineAsync("publishes faster than Broker:MaxPublishRate 200/s");
            // Answered while most of the flood is still waiting at the door (it would take 250 s to let it all in).
            var floodAnswered = watcher.Received.Count(m => m.Topic == "flood/commands");
            Assert.True(floodAnswered < 25_000, $"{floodAnswered} of 50,000 flood readings were let through");

            await stop.CancelAsync();
            foreach (var c in crowd)
            {
                await c.DisposeAsync();
            }
        }
    }
}
