using System.Net.Sockets;
using MQTTnet;
using MQTTnet.Formatter;
using MQTTnet.Protocol;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>
/// Plain MQTT's own transport under Kestrel (LeanSocketTransportFactory): what it must keep that a user or a device
/// sees — both loopback addresses for localhost, a clean end at shutdown, connections half closed by the client,
/// packets that arrive in pieces, a client that stops reading.
/// </summary>
public class PlainMqttTransportTests
{
    [Fact]
    public async Task Localhost_serves_both_loopback_addresses_and_an_ipv6_bind_serves_ipv6_only()
    {
        var (both, bothPort, _) = await NightlightCli.StartBrokerAsync();
        await using (both)
        {
            foreach (var host in new[] { "127.0.0.1", "::1" })
            {
                await using var raw = await RawMqtt.OpenAsync(bothPort, host);
                Assert.Equal(0, await raw.ConnectAsync("both-" + host.Replace(':', 'x')));
            }
        }

        var (ipv6, port, _) = await NightlightCli.StartBrokerAsync("--bind", "::1");
        await using (ipv6)
        {
            await using (var device = await MqttProbe.ConnectAsync(port, MqttProtocolVersion.V500, "six", "::1"))
            {
                await device.SubscribeAsync("six/commands");
                await device.PublishAsync("six/commands", "{\"led_on\": true}");
                await device.WaitForAsync(m => m.Topic == "six/commands");
            }
            var refused = await Assert.ThrowsAsync<SocketException>(() => RawMqtt.OpenAsync(port, "127.0.0.1"));
            Assert.Equal(SocketError.ConnectionRefused, refused.SocketErrorCode);
        }
    }

    [Fact]
    public async Task Stopping_the_broker_tells_connected_clients_and_exits_promptly()
    {
        var (broker, port, _) = await NightlightCli.StartBrokerAsync();
        await using (broker)
        {
            var told = new TaskCompletionSource<MqttClientDisconnectReason>(TaskCreationOptions.RunContinuationsAsynchronously);
            await using var v5 = await MqttProbe.ConnectAsync(port, MqttProtocolVersion.V500, "five");
            v5.Client.DisconnectedAsync += e =>
            {
                told.TrySetResult(e.Reason);
                return Task.CompletedTask;
            };
            await using var v311 = await RawMqtt.OpenAsync(port);
            Assert.Equal(0, await v311.ConnectAsync("three"));

            broker.Signal("TERM");

            // MQTT 5 hears why (DISCONNECT, server shutting down); 3.1.1 has no such packet and sees the connection end.
            Assert.Equal(MqttClientDisconnectReason.ServerShuttingDown, await told.Task.WaitAsync(TimeSpan.FromSeconds(15)));
            Assert.True(await v311.ClosedWithinAsync(TimeSpan.FromSeconds(15)));
            Assert.True(await broker.WaitForExitAsync(TimeSpan.FromSeconds(15)), broker.Describe());
            Assert.Equal(0, broker.ExitCode);
            Assert.DoesNotContain(broker.StderrLines, l => l.Contains("still open", StringComparison.Ordinal) || l.Contains("connection from", StringComparison.Ordinal));
        }
    }

    [Fact]
    public async Task A_client_that_stops_sending_after_a_qos1_publish_still_gets_its_puback()
    {
        // Half closed: the client's FIN ends the broker's input, and its answer must still go out the other way.
        var (broker, port, _) = await NightlightCli.StartBrokerAsync();
        await using (broker)
        {
            await using var watcher = await MqttProbe.ConnectAsync(port);
            await watcher.SubscribeAsync("half/#");
            await using var raw = await RawMqtt.OpenAsync(port);
            Assert.Equal(0, await raw.ConnectAsync("half"));
            await raw.SendAsync(Packets.Publish("half/telemetry", "{\"light\": 5}"u8.ToArray(), qos: 1, packetId: 7));
            raw.CloseSending();
            var ack = await raw.ReadPacketAsync(TimeSpan.FromSeconds(20));
            Assert.True(ack is [0x40, 2, 0, 7], "expected PUBACK for packet 7");
            await watcher.WaitForAsync(m => m.Topic == "half/telemetry");
            Assert.True(await raw.ClosedWithinAsync(TimeSpan.FromSeconds(20)));
        }
    }

    [Fact]
    public async Task A_large_publish_trickling_in_small_pieces_arrives_whole()
    {
        // 200 KB in 1 KB pieces: the receive buffer grows for the packet and is given back after it.
        var (broker, port, _) = await NightlightCli.StartBrokerAsync();
        await using (broker)
        {
            await using var watcher = await MqttProbe.ConnectAsync(port);
            await watcher.SubscribeAsync("big/#");
            await using var raw = await RawMqtt.OpenAsync(port);
            Assert.Equal(0, await raw.ConnectAsync("big"));
            var payload = new byte[200 * 1024];
            for (var i = 0; i < payload.Length; i++)
            {
                payload[i] = (byte)('a' + i % 26);
            }
            var packet = Packets.Publish("big/telemetry", payload);
            for (var offset = 0; offset < packet.Length; offset += 1024)
            {
                await raw.SendAsync(packet[offset..Math.Min(packet.Length, offset + 1024)]);
                if (offset % (32 * 1024) == 0)
                {
                    await Task.Delay(20);
                }
            }
            await raw.SendAsync(Packets.Publish("big/after", "{\"light\": 1}"u8.ToArray()));
            var received = await watcher.WaitForAsync(m => m.Topic.StartsWith("big/", StringComparison.Ordinal), 2);
            Assert.Equal(System.Text.Encoding.UTF8.GetString(payload), received.Single(m => m.Topic == "big/telemetry").Payload);
            Assert.Contains(received, m => m.Topic == "big/after");
        }
    }

    [Fact]
    public async Task A_client_that_stops_reading_is_held_to_its_queue_limit_and_others_are_served()
    {
        // 20 MB for a subscriber that reads nothing: the broker may hold a bounded amount for it and must drop (and log)
        // the rest, not grow, while another client's messages still go through.
        var (broker, port, _) = await NightlightCli.StartBrokerAsync();
        await using (broker)
        {
            await using var stalled = await RawMqtt.OpenAsync(port);
            Assert.Equal(0, await stalled.ConnectAsync("stalled"));
            await stalled.SendAsync(Packets.Subscribe("stall/#"));
            Assert.True(await stalled.ReadPacketAsync(TimeSpan.FromSeconds(20)) is [0x90, ..], "expected SUBACK");
            await using var watcher = await MqttProbe.ConnectAsync(port);
            await watcher.SubscribeAsync("ok/#");
            await using var publisher = await MqttProbe.ConnectAsync(port);

            var payload = new byte[1024];
            for (var i = 0; i < 20_000; i++)
            {
                await publisher.PublishAsync("stall/telemetry", payload);
            }
            await broker.WaitForErrorLineAsync("Dropped a message on stall/telemetry for client stalled: its queue is full", TimeSpan.FromSeconds(30));
            await publisher.PublishAsync("ok/telemetry", "{\"light\": 1}");
            await watcher.WaitForAsync(m => m.Topic == "ok/telemetry");

            // Reading again, the stalled client gets what was kept for it.
            Assert.True(await stalled.ReadPacketAsync(TimeSpan.FromSeconds(20)) is [0x30, ..], "expected a PUBLISH");
        }
    }
}
