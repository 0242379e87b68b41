using System.Text;
using MQTTnet;
using MQTTnet.Formatter;
using MQTTnet.Protocol;
using Nightlight.Mqtt;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>
/// The SDK's MQTT clients gather packets into block writes and read in blocks (BufferedClientAdapterFactory). What
/// other clients see must not change: every packet, in order, whole; and a broken connection must fail the
/// publishes waiting on it instead of leaving them hanging.
/// </summary>
public class BufferedClientTests
{
    static MqttClientOptions Options(int port, string clientId, MqttProtocolVersion version) =>
        new MqttClientOptionsBuilder().WithTcpServer("127.0.0.1", port).WithClientId(clientId).WithProtocolVersion(version)
            .WithTimeout(TimeSpan.FromSeconds(20)).Build();

    [Theory]
    [InlineData(MqttProtocolVersion.V311)]
    [InlineData(MqttProtocolVersion.V500)]
    public async Task Many_publishes_at_once_arrive_whole_and_in_order_through_mosquitto(MqttProtocolVersion version)
    {
        await using var mosquitto = await MosquittoBroker.StartAsync("max_queued_messages 0\n");
        const int count = 5000;
        using var subscriber = new BufferedClientAdapterFactory(readBufferSize: 512).CreateClient();
        var received = new List<string>();
        var all = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        subscriber.ApplicationMessageReceivedAsync += e =>
        {
            lock (received)
            {
                received.Add(Encoding.UTF8.GetString(e.ApplicationMessage.Payload));
                if (received.Count == count)
                {
                    all.TrySetResult();
                }
            }
            return Task.CompletedTask;
        };
        await subscriber.ConnectAsync(Options(mosquitto.Port, "buffered-sub", version));
        await subscriber.SubscribeAsync(new MqttClientSubscribeOptionsBuilder().WithTopicFilter("b1/telemetry", MqttQualityOfServiceLevel.AtLeastOnce).Build());

        using var publisher = new BufferedClientAdapterFactory().CreateClient();
        await publisher.ConnectAsync(Options(mosquitto.Port, "buffered-pub", version));
        // Payloads of different sizes, some larger than the subscriber's read block, all started before any completes.
        var payloads = Enumerable.Range(0, count).Select(i => $"{{\"seq\": {i}, \"pad\": \"{new string('x', i % 7 == 0 ? 3000 : i % 50)}\"}}").ToArray();
        // Started from one loop, in order, with a window of publishes in flight, as the SDK's outbox replays.
        var window = version == MqttProtocolVersion.V500 ? 20 : 500;
        var inFlight = new Queue<Task<MqttClientPublishResult>>();
        var acknowledged = 0;
        foreach (var payload in payloads)
        {
            if (inFlight.Count == window && (await inFlight.Dequeue()).IsSuccess)
            {
                acknowledged++;
            }
            inFlight.Enqueue(publisher.PublishAsync(new MqttApplicationMessageBuilder().WithTopic("b1/telemetry").WithPayload(payload)
                .WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build()));
        }
        foreach (var result in await Task.WhenAll(inFlight))
        {
            acknowledged += result.IsSuccess ? 1 : 0;
        }
        Assert.Equal(count, acknowledged);
        await all.Task.WaitAsync(TimeSpan.FromSeconds(60));

        Assert.Equal(payloads, received);
        await publisher.DisconnectAsync();
        await subscriber.DisconnectAsync();
    }

    [Fact]
    public async Task Publishes_waiting_on_a_connection_that_breaks_fail_instead_of_hanging()
    {
        await using var mosquitto = await MosquittoBroker.StartAsync();
        await using var proxy = TcpProxy.Start(mosquitto.Port);
        using var publisher = new BufferedClientAdapterFactory().CreateClient();
        await publisher.ConnectAsync(Options(proxy.Port, "buffered-cut", MqttProtocolVersion.V311));

        Assert.True((await publisher.PublishAsync(new MqttApplicationMessageBuilder().WithTopic("b2/telemetry").WithPayload("{\"seq\": 0}")
            .WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build())).IsSuccess);

        // After the cut nothing can be acknowledged: every publish, whether written before the client notices or
        // refused after, must come back as failed, and soon.
        proxy.Cut();
        var sending = Enumerable.Range(1, 200).Select(async i =>
        {
            try
            {
                var result = await publisher.PublishAsync(new MqttApplicationMessageBuilder().WithTopic("b2/telemetry").WithPayload($"{{\"seq\": {i}}}")
                    .WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build());
                return result.IsSuccess;
            }
            catch (Exception)
            {
                // MQTTnet reports a lost connection in several ways (communication errors, and a null reference when
                // the publish starts as the client tears the connection down); each means "not delivered".
                return false;
            }
        }).ToList();

        var outcomes = await Task.WhenAll(sending).WaitAsync(TimeSpan.FromSeconds(30));
        Assert.All(outcomes, Assert.False);
        Assert.False(publisher.IsConnected);
    }
}
