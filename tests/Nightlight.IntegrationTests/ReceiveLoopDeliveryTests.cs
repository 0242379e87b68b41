using System.Text;
using Microsoft.Extensions.Logging;
using MQTTnet;
using MQTTnet.Protocol;
using Nightlight.Mqtt;
using Nightlight.Protocol;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>
/// <see cref="MqttConnectionOptions.DeliverOnReceiveLoop"/>: the server's connection hands each publish it reads to its
/// handler on the receive loop and holds the answers back until that read is used up. What must hold: every message
/// arrives once and in order at each QoS, QoS 1 and 2 messages are still acknowledged (or the broker's in-flight window
/// would close), a handler that throws is logged and costs neither the connection nor the messages after it, and
/// answers published from the handler all leave, the last one too.
/// </summary>
public class ReceiveLoopDeliveryTests
{
    sealed class ErrorLog : ILogger
    {
        public readonly List<string> Errors = [];

        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (logLevel >= LogLevel.Error)
            {
                lock (Errors)
                {
                    Errors.Add($"{formatter(state, exception)}: {exception?.Message}");
                }
            }
        }
    }

    [Theory]
    [InlineData(MqttProtocol.V311)]
    [InlineData(MqttProtocol.V500)]
    public async Task Messages_handled_on_the_receive_loop_arrive_in_order_are_acknowledged_and_their_answers_leave(MqttProtocol protocol)
    {
        // An in-flight window of 10: QoS 1 and 2 messages left unacknowledged would stop the flow after ten.
        await using var mosquitto = await MosquittoBroker.StartAsync("max_inflight_messages 10\n");
        var log = new ErrorLog();
        await using var connection = new ManagedMqttConnection(new MqttConnectionOptions
        {
            Brokers = [BrokerAddress.Parse(mosquitto.Url)], ClientId = "loop-deliver", Protocol = protocol, DeliverOnReceiveLoop = true,
        }, log);
        var received = new List<string>();
        connection.MessageReceived = async (topic, payload) =>
        {
            var text = Encoding.UTF8.GetString(payload);
            if (text == "boom")
            {
                throw new InvalidOperationException("the handler failed");
            }
            lock (received)
            {
                received.Add($"{topic} {text}");
            }
            // Answered as the server answers: QoS 0, and QoS 1 awaited only until it has left.
            var answer = Encoding.UTF8.GetBytes($"{topic} {text}");
            if (text.EndsWith('0'))
            {
                await connection.PublishInOrderAsync("answers/" + topic, answer, MqttQualityOfServiceLevel.AtLeastOnce);
            }
            else
            {
                await connection.TryPublishAsync("answers/" + topic, answer);
            }
        };
        await connection.SubscribeAsync("r/#", MqttQualityOfServiceLevel.ExactlyOnce);
        await connection.StartAsync(CancellationToken.None);

        var answers = new List<string>();
        var watcher = new MqttClientFactory().CreateMqttClient();
        watcher.ApplicationMessageReceivedAsync += e =>
        {
            lock (answers)
            {
                answers.Add(Encoding.UTF8.GetString(e.ApplicationMessage.Payload));
            }
            return Task.CompletedTask;
        };
        await watcher.ConnectAsync(new MqttClientOptionsBuilder().WithTcpServer("127.0.0.1", mosquitto.Port).WithClientId("loop-watch").Build());
        await watcher.SubscribeAsync("answers/#");

        var sender = new MqttClientFactory().CreateMqttClient();
        await sender.ConnectAsync(new MqttClientOptionsBuilder().WithTcpServer("127.0.0.1", mosquitto.Port).WithClientId("loop-send").Build());
        const int count = 400;
        var levels = new[] { MqttQualityOfServiceLevel.AtMostOnce, MqttQualityOfServiceLevel.AtLeastOnce, MqttQualityOfServiceLevel.ExactlyOnce };
        foreach (var qos in levels)
        {
            // One at a time: the broker's window of ten applies to the sender too.
            for (var i = 0; i < count; i++)
            {
                if (i == count / 2)
                {
                    await sender.PublishAsync(new MqttApplicationMessageBuilder().WithTopic($"r/q{(int)qos}").WithPayload("boom").WithQualityOfServiceLevel(qos).Build());
                }
                await sender.PublishAsync(new MqttApplicationMessageBuilder().WithTopic($"r/q{(int)qos}").WithPayload($"n {i}").WithQualityOfServiceLevel(qos).Build());
            }
        }

        await PublishSequenceTests.WaitUntilAsync(() => { lock (received) { return received.Count >= levels.Length * count; } }, "every message was handled");
        await PublishSequenceTests.WaitUntilAsync(() => { lock (answers) { return answers.Count >= levels.Length * count; } }, "every answer arrived");
        foreach (var qos in levels)
        {
            var expected = Enumerable.Range(0, count).Select(i => $"r/q{(int)qos} n {i}").ToList();
            lock (received)
            {
                Assert.Equal(expected, received.Where(m => m.StartsWith($"r/q{(int)qos} ", StringComparison.Ordinal)));
            }
            lock (answers)
            {
                Assert.Equal(expected, answers.Where(m => m.StartsWith($"r/q{(int)qos} ", StringComparison.Ordinal)));
            }
        }
        lock (log.Errors)
        {
            Assert.Equal(levels.Length, log.Errors.Count);
            Assert.All(log.Errors, e => Assert.Contains("the handler failed", e));
        }
        Assert.Equal(0, connection.Reconnects);
        Assert.True(connection.IsConnected);
        await sender.DisconnectAsync();
        await watcher.DisconnectAsync();
    }
}
