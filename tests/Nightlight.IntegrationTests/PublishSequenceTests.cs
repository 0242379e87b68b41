using System.Text;
using Microsoft.Extensions.Logging.Abstractions;
using MQTTnet;
using MQTTnet.Formatter;
using MQTTnet.Protocol;
using Nightlight.Mqtt;
using Nightlight.Protocol;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>
/// <see cref="ManagedMqttConnection.TryPublishSequenceAsync"/> writes QoS 1 publishes and counts their PUBACKs beside
/// MQTTnet's client on the same connection, renumbering MQTTnet's packet identifiers so the two never collide. What
/// must hold: every publish of a sequence arrives once and in order, MQTTnet's own publishes and subscriptions still
/// work while it runs, the broker's Receive Maximum is kept, and what is reported as acknowledged really arrived.
/// </summary>
public class PublishSequenceTests
{
    static byte[][] Payloads(int count) =>
        [.. Enumerable.Range(0, count).Select(i => Encoding.UTF8.GetBytes($"{{\"light\": {i % 1024}, \"seq\": {i}, \"pad\": \"{new string('x', i % 40)}\"}}"))];

    static async Task<(IMqttClient Client, List<string> Received)> SubscribeAsync(int port, string filter, MqttQualityOfServiceLevel qos = MqttQualityOfServiceLevel.AtLeastOnce)
    {
        var received = new List<string>();
        var client = new MqttClientFactory().CreateMqttClient();
        client.ApplicationMessageReceivedAsync += e =>
        {
            lock (received)
            {
                received.Add($"{e.ApplicationMessage.Topic} {Encoding.UTF8.GetString(e.ApplicationMessage.Payload)}");
            }
            return Task.CompletedTask;
        };
        await client.ConnectAsync(new MqttClientOptionsBuilder().WithTcpServer("127.0.0.1", port).WithClientId("seq-watch-" + Guid.NewGuid().ToString("N")[..8])
            .WithTimeout(TimeSpan.FromSeconds(20)).Build());
        await client.SubscribeAsync(new MqttClientSubscribeOptionsBuilder().WithTopicFilter(filter, qos).Build());
        return (client, received);
    }

    /// <summary>Polls <paramref name="condition"/> every 20 ms; fails after 30 s, naming <paramref name="what"/>.</summary>
    internal static async Task WaitUntilAsync(Func<bool> condition, string what)
    {
        for (var waited = 0; !condition(); waited += 20)
        {
            Assert.True(waited < 30_000, $"timed out waiting until {what}");
            await Task.Delay(20);
        }
    }

    [Theory]
    [InlineData(MqttProtocol.V311)]
    [InlineData(MqttProtocol.V500)]
    public async Task A_sequence_and_the_clients_own_publishes_and_subscriptions_share_one_connection(MqttProtocol protocol)
    {
        // A Receive Maximum of 10 (MQTT 5): a client that keeps more QoS 1 and 2 publishes in flight is disconnected.
        await using var mosquitto = await MosquittoBroker.StartAsync("max_inflight_messages 10\n");
        var (watcher, received) = await SubscribeAsync(mosquitto.Port, "s1/#");
        await using var connection = new ManagedMqttConnection(new MqttConnectionOptions
        {
            Brokers = [BrokerAddress.Parse(mosquitto.Url)], ClientId = "seq-shared", Protocol = protocol,
        }, NullLogger.Instance);
        var echoes = 0;
        connection.MessageReceived = (_, _) =>
        {
            Interlocked.Increment(ref echoes);
            return Task.CompletedTask;
        };
        await connection.SubscribeAsync("s1/echo", MqttQualityOfServiceLevel.AtLeastOnce);
        await connection.StartAsync(CancellationToken.None);

        const int count = 3000;
        var payloads = Payloads(count);
        var sequence = connection.TryPublishSequenceAsync("s1/telemetry", payloads, window: 100);
        // Meanwhile the client's own QoS 1 and QoS 2 publishes (a few at a time, as a device sends them) and a new
        // subscription go through the same connection.
        var subscribing = connection.SubscribeAsync("s1/other", MqttQualityOfServiceLevel.ExactlyOnce);
        var own = new List<bool>();
        for (var group = 0; group < 10; group++)
        {
            own.AddRange(await Task.WhenAll(Enumerable.Range(group * 4, 4).Select(i => connection.TryPublishAsync(i % 3 == 0 ? "s1/echo" : "s1/other",
                Encoding.UTF8.GetBytes($"own {i}"), i % 2 == 0 ? MqttQualityOfServiceLevel.AtLeastOnce : MqttQualityOfServiceLevel.ExactlyOnce))));
        }
        await subscribing.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(count, await sequence.WaitAsync(TimeSpan.FromSeconds(60)));
        Assert.All(own, Assert.True);
        await WaitUntilAsync(() => { lock (received) { return received.Count >= count + own.Count; } }, "everything arrived");

        List<string> seen;
        lock (received)
        {
            seen = [.. received];
        }
        var telemetry = seen.Where(m => m.StartsWith("s1/telemetry ", StringComparison.Ordinal)).ToList();
        Assert.Equal(payloads.Select(p => "s1/telemetry " + Encoding.UTF8.GetString(p)), telemetry);
        Assert.Equal(Enumerable.Range(0, own.Count).Select(i => $"own {i}").Order(), seen.Where(m => !m.StartsWith("s1/telemetry ", StringComparison.Ordinal))
            .Select(m => m[(m.IndexOf(' ') + 1)..]).Order());
        var echoed = Enumerable.Range(0, own.Count).Count(i => i % 3 == 0);
        await WaitUntilAsync(() => Volatile.Read(ref echoes) >= echoed, "the client received its own echoes");
        Assert.Equal(0, connection.Reconnects);
        Assert.True(connection.IsConnected);
        await watcher.DisconnectAsync();
    }

    [Fact]
    public async Task Single_publishes_made_one_after_another_arrive_in_that_order_beyond_the_receive_maximum()
    {
        // As the server sends commands: started one after another, not awaited one by one, many more than the broker's
        // Receive Maximum (Mosquitto's default of 20) in flight. A device must get them in the order they were made.
        await using var mosquitto = await MosquittoBroker.StartAsync();
        var (watcher, received) = await SubscribeAsync(mosquitto.Port, "s3/commands");
        await using var connection = new ManagedMqttConnection(new MqttConnectionOptions
        {
            Brokers = [BrokerAddress.Parse(mosquitto.Url)], ClientId = "seq-order", Protocol = MqttProtocol.V500,
        }, NullLogger.Instance);
        await connection.StartAsync(CancellationToken.None);
        Assert.Equal(20, connection.ReceiveMaximum);

        const int count = 2000;
        var publishes = Enumerable.Range(0, count)
            .Select(i => connection.TryPublishAsync("s3/commands", Encoding.UTF8.GetBytes($"{{\"led_on\": {(i % 2 == 0 ? "true" : "false")}, \"n\": {i}}}"),
                MqttQualityOfServiceLevel.AtLeastOnce)).ToList();
        Assert.All(await Task.WhenAll(publishes).WaitAsync(TimeSpan.FromSeconds(30)), Assert.True);
        await WaitUntilAsync(() => { lock (received) { return received.Count >= count; } }, "every command arrived");
        lock (received)
        {
            Assert.Equal(Enumerable.Range(0, count).Select(i => $"s3/commands {{\"led_on\": {(i % 2 == 0 ? "true" : "false")}, \"n\": {i}}}"), received);
        }
        await watcher.DisconnectAsync();
    }

    [Fact]
    public async Task Publishes_awaited_only_until_they_leave_arrive_in_order_across_QoS_levels()
    {
        // As the server answers readings: a tracked command (QoS 1) and plain answers (QoS 0) to the same device, each
        // awaited until it has left but not for its PUBACK. A device subscribed as the lesson's is (QoS 0) must still
        // get them in the order they were made. (A QoS 1 subscriber whose in-flight window is full can see a QoS 0
        // publish pass QoS 1 ones Mosquitto holds back for it, whatever the sender does.)
        await using var mosquitto = await MosquittoBroker.StartAsync();
        var (watcher, received) = await SubscribeAsync(mosquitto.Port, "s4/commands", MqttQualityOfServiceLevel.AtMostOnce);
        await using var connection = new ManagedMqttConnection(new MqttConnectionOptions
        {
            Brokers = [BrokerAddress.Parse(mosquitto.Url)], ClientId = "seq-left", Protocol = MqttProtocol.V311,
        }, NullLogger.Instance);
        await connection.StartAsync(CancellationToken.None);

        const int count = 3000;
        var acknowledgements = new List<Task<bool>>();
        for (var i = 0; i < count; i++)
        {
            var qos = i % 10 == 0 ? MqttQualityOfServiceLevel.AtLeastOnce : MqttQualityOfServiceLevel.AtMostOnce;
            var accepted = await connection.PublishInOrderAsync("s4/commands", Encoding.UTF8.GetBytes($"n {i}"), qos).WaitAsync(TimeSpan.FromSeconds(30));
            if (qos == MqttQualityOfServiceLevel.AtLeastOnce)
            {
                acknowledgements.Add(accepted);
            }
        }
        Assert.All(await Task.WhenAll(acknowledgements).WaitAsync(TimeSpan.FromSeconds(30)), Assert.True);
        await WaitUntilAsync(() => { lock (received) { return received.Count >= count; } }, "every publish arrived");
        lock (received)
        {
            Assert.Equal(Enumerable.Range(0, count).Select(i => $"s4/commands n {i}"), received);
        }
        await watcher.DisconnectAsync();
    }

    [Fact]
    public async Task A_sequence_cut_off_reports_only_what_arrived_and_returns()
    {
        await using var mosquitto = await MosquittoBroker.StartAsync();
        await using var proxy = TcpProxy.Start(mosquitto.Port);
        var (watcher, received) = await SubscribeAsync(mosquitto.Port, "s2/#");
        await using var connection = new ManagedMqttConnection(new MqttConnectionOptions
        {
            Brokers = [BrokerAddress.Parse(proxy.Url)], ClientId = "seq-cut", Protocol = MqttProtocol.V311,
        }, NullLogger.Instance);
        await connection.StartAsync(CancellationToken.None);

        const int count = 200_000;
        var payloads = Payloads(count);
        var sequence = connection.TryPublishSequenceAsync("s2/telemetry", payloads, window: 50);
        await WaitUntilAsync(() => { lock (received) { return received.Count >= 2000; } }, "the sequence was under way");
        // Single QoS 1 publishes under way when the connection breaks come back too, true only for what arrived.
        var singles = Enumerable.Range(0, 300).Select(i => connection.TryPublishAsync("s2/single", Encoding.UTF8.GetBytes($"single {i}"),
            MqttQualityOfServiceLevel.AtLeastOnce)).ToList();
        proxy.Cut();

        var accepted = await sequence.WaitAsync(TimeSpan.FromSeconds(30));
        var singleOutcomes = await Task.WhenAll(singles).WaitAsync(TimeSpan.FromSeconds(30));
        Assert.InRange(accepted, 1, count - 1);
        // Everything reported as acknowledged reached the subscriber, in order; Mosquitto delivers what it acknowledged.
        await WaitUntilAsync(() => { lock (received) { return received.Count >= accepted + singleOutcomes.Count(ok => ok); } }, "the acknowledged publishes arrived");
        List<string> seen;
        lock (received)
        {
            seen = [.. received];
        }
        Assert.Equal(payloads.Take(accepted).Select(p => "s2/telemetry " + Encoding.UTF8.GetString(p)),
            seen.Where(m => m.StartsWith("s2/telemetry ", StringComparison.Ordinal)).Take(accepted));
        var singlesSeen = seen.Where(m => m.StartsWith("s2/single ", StringComparison.Ordinal)).ToHashSet();
        Assert.All(Enumerable.Range(0, singles.Count).Where(i => singleOutcomes[i]), i => Assert.Contains($"s2/single single {i}", singlesSeen));
        // A later sequence on the broken connection sends nothing and says so at once.
        Assert.Equal(0, await connection.TryPublishSequenceAsync("s2/telemetry", payloads[..10], window: 5).WaitAsync(TimeSpan.FromSeconds(30)));
        await watcher.DisconnectAsync();
    }

    [Theory]
    [InlineData(MqttProtocol.V311)]
    [InlineData(MqttProtocol.V500)]
    public async Task QoS_0_publishes_written_by_the_connection_arrive_in_order_and_a_bad_topic_is_refused(MqttProtocol protocol)
    {
        await using var mosquitto = await MosquittoBroker.StartAsync();
        await using var proxy = TcpProxy.Start(mosquitto.Port);
        var (watcher, received) = await SubscribeAsync(mosquitto.Port, "q0/#", MqttQualityOfServiceLevel.AtMostOnce);
        await using var connection = new ManagedMqttConnection(new MqttConnectionOptions
        {
            Brokers = [BrokerAddress.Parse(proxy.Url)], ClientId = "q0-writer", Protocol = protocol,
        }, NullLogger.Instance);
        await connection.StartAsync(CancellationToken.None);

        // Many writers at once, as a server's answers and its acknowledgements are: each writer's publishes keep their order.
        var outcomes = await Task.WhenAll(Enumerable.Range(0, 4).Select(w => Task.Run(async () =>
        {
            var ok = 0;
            for (var i = 0; i < 2000; i++)
            {
                ok += await connection.TryPublishAsync($"q0/w{w}", Encoding.UTF8.GetBytes($"{i}")) ? 1 : 0;
            }
            return ok;
        })));
        Assert.All(outcomes, ok => Assert.Equal(2000, ok));
        await WaitUntilAsync(() => { lock (received) { return received.Count >= 8000; } }, "every QoS 0 publish arrived");
        lock (received)
        {
            for (var w = 0; w < 4; w++)
            {
                Assert.Equal(Enumerable.Range(0, 2000).Select(i => $"q0/w{w} {i}"), received.Where(m => m.StartsWith($"q0/w{w} ", StringComparison.Ordinal)));
            }
        }

        // A retained QoS 0 publish is kept by the broker for a later subscriber.
        Assert.True(await connection.TryPublishAsync("q0/retained", Encoding.UTF8.GetBytes("kept"), retain: true));
        var (late, lateReceived) = await SubscribeAsync(mosquitto.Port, "q0/retained", MqttQualityOfServiceLevel.AtMostOnce);
        await WaitUntilAsync(() => { lock (lateReceived) { return lateReceived.Contains("q0/retained kept"); } }, "the retained publish reached a later subscriber");

        // A topic with a wildcard is not published, and says so; an empty topic is the caller's mistake.
        Assert.False(await connection.TryPublishAsync("q0/+", Encoding.UTF8.GetBytes("no")));
        await Assert.ThrowsAsync<ArgumentException>(() => connection.TryPublishAsync("", Encoding.UTF8.GetBytes("no")));

        // With the connection gone, a publish reports that it was not sent, without throwing.
        proxy.Cut();
        await WaitUntilAsync(() => !connection.IsConnected, "the connection noticed the cut");
        Assert.False(await connection.TryPublishAsync("q0/w0", Encoding.UTF8.GetBytes("lost")));
        await watcher.DisconnectAsync();
        await late.DisconnectAsync();
    }
}
