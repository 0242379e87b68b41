using MQTTnet.Formatter;
using MQTTnet.Protocol;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>Standard clients against our embedded broker, unchanged: Mosquitto's command-line clients and MQTTnet.</summary>
public class BrokerInteropTests
{
    static async Task<ProcessRunner> SubscribeAsync(int port, params string[] args)
    {
        // stdbuf: mosquitto_sub buffers its output when it is not a terminal.
        var sub = ProcessRunner.Start(External.Require("stdbuf", "coreutils"),
            ["-oL", External.Require("mosquitto_sub", "mosquitto-clients"), "-h", "127.0.0.1", "-p", port.ToString(), "-v", "-d", .. args]);
        await sub.WaitForLineAsync("received SUBACK");
        return sub;
    }

    static async Task PublishAsync(int port, params string[] args)
    {
        var (code, stdout, stderr) = await Task.Run(() => ProcessRunner.Run(External.Require("mosquitto_pub", "mosquitto-clients"),
            ["-h", "127.0.0.1", "-p", port.ToString(), .. args], TimeSpan.FromSeconds(20)));
        Assert.True(code == 0, $"mosquitto_pub {string.Join(' ', args)} failed ({code}): {stdout} {stderr}");
    }

    [Theory]
    [InlineData("mqttv311")]
    [InlineData("mqttv5")]
    public async Task Mosquitto_clients_publish_and_subscribe_with_wildcards(string version)
    {
        var (broker, port, _) = await NightlightCli.StartBrokerAsync();
        await using (broker)
        {
            await using var hash = await SubscribeAsync(port, "-V", version, "-i", "sub-hash", "-t", "house/#");
            await using var plus = await SubscribeAsync(port, "-V", version, "-i", "sub-plus", "-t", "+/telemetry");
            await PublishAsync(port, "-V", version, "-t", "house/kitchen/light", "-m", "on");
            await PublishAsync(port, "-V", version, "-t", "lamp7/telemetry", "-m", "{\"light\": 5}");

            await hash.WaitForLineAsync("house/kitchen/light on");
            await plus.WaitForLineAsync("lamp7/telemetry {\"light\": 5}");
            Assert.DoesNotContain(plus.StdoutLines, l => l.StartsWith("house/", StringComparison.Ordinal));
        }
    }

    [Fact]
    public async Task A_client_without_a_client_id_is_given_one()
    {
        var (broker, port, _) = await NightlightCli.StartBrokerAsync();
        await using (broker)
        {
            // No -i: mosquitto_sub sends an empty client id, which MQTTnet alone rejects for 3.1.1.
            await using var sub = await SubscribeAsync(port, "-V", "mqttv311", "-t", "anon/#");
            await PublishAsync(port, "-V", "mqttv311", "-t", "anon/x", "-m", "hello");
            await sub.WaitForLineAsync("anon/x hello");
        }
    }

    [Theory]
    [InlineData("1")]
    [InlineData("2")]
    public async Task Qos_1_and_2_messages_arrive_once(string qos)
    {
        var (broker, port, _) = await NightlightCli.StartBrokerAsync();
        await using (broker)
        {
            await using var sub = await SubscribeAsync(port, "-q", qos, "-t", "q/#", "-C", "20");
            for (var i = 0; i < 20; i++)
            {
                await PublishAsync(port, "-q", qos, "-t", "q/n", "-m", $"m{i}");
            }
            Assert.True(await sub.WaitForExitAsync(TimeSpan.FromSeconds(20)), sub.Describe());
            var received = sub.StdoutLines.Where(l => l.StartsWith("q/n ", StringComparison.Ordinal)).ToList();
            Assert.Equal(Enumerable.Range(0, 20).Select(i => $"q/n m{i}"), received);
        }
    }

    [Fact]
    public async Task Retained_messages_reach_later_subscribers()
    {
        var (broker, port, _) = await NightlightCli.StartBrokerAsync();
        await using (broker)
        {
            await PublishAsync(port, "-r", "-q", "1", "-t", "lamp1/status", "-m", "online");
            // No wait for SUBACK here: the broker may send the retained message first (3.1.1 §3.8.4 allows it).
            await using var sub = ProcessRunner.Start(External.Require("stdbuf", "coreutils"),
                ["-oL", External.Require("mosquitto_sub", "mosquitto-clients"), "-h", "127.0.0.1", "-p", port.ToString(), "-v", "-d", "-t", "lamp1/status", "-C", "1"]);
            await sub.WaitForLineAsync("lamp1/status online");
            await sub.WaitForLineAsync("r1,");
        }
    }

    [Theory]
    [InlineData(MqttProtocolVersion.V311)]
    [InlineData(MqttProtocolVersion.V500)]
    public async Task MQTTnet_clients_of_both_versions_are_served(MqttProtocolVersion version)
    {
        var (broker, port, http) = await NightlightCli.StartBrokerAsync();
        await using (broker)
        {
            await using var tcp = await MqttProbe.ConnectAsync(port, version);
            await using var ws = await MqttProbe.ConnectWebSocketAsync($"ws://127.0.0.1:{http}/mqtt", version);
            await tcp.SubscribeAsync("v/#", MqttQualityOfServiceLevel.AtLeastOnce);
            await ws.PublishAsync("v/1", "from websocket", MqttQualityOfServiceLevel.AtLeastOnce);
            await tcp.WaitForAsync(m => m is { Topic: "v/1", Payload: "from websocket" });
        }
    }

    [Fact]
    public async Task An_empty_client_id_with_a_persistent_session_is_refused()
    {
        var (broker, port, _) = await NightlightCli.StartBrokerAsync();
        await using (broker)
        {
            // MQTT 3.1.1 §3.1.3-8: a persistent session needs an id to find it again, so the broker must say no.
            // MQTTnet's client refuses to send this, so the CONNECT is written by hand: clean session 0, empty id.
            using var tcp = new System.Net.Sockets.TcpClient();
            await tcp.ConnectAsync("127.0.0.1", port);
            var stream = tcp.GetStream();
            byte[] connect = [0x10, 12, 0, 4, (byte)'M', (byte)'Q', (byte)'T', (byte)'T', 4, 0x00, 0, 60, 0, 0];
            await stream.WriteAsync(connect);
            var connack = new byte[4];
            try
            {
                await stream.ReadExactlyAsync(connack).AsTask().WaitAsync(TimeSpan.FromSeconds(10));
                Assert.Equal(new byte[] { 0x20, 0x02, 0x00, 0x02 }, connack); // 0x02: identifier rejected
            }
            catch (Exception e) when (e is IOException or EndOfStreamException)
            {
                // MQTTnet's decoder drops such a CONNECT before any answer: refused all the same, never accepted.
            }
        }
    }
}
