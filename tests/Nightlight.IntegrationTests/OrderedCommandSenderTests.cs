using MQTTnet.Protocol;
using Nightlight.Device;
using Nightlight.Mqtt;
using Nightlight.Protocol;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>The SDK's ordered command sender against Mosquitto: retries, expiry and acknowledgement.</summary>
public class OrderedCommandSenderTests
{
    [Fact]
    public async Task An_ordered_command_for_a_device_that_never_answers_expires_and_the_next_one_still_goes()
    {
        await using var mosquitto = await MosquittoBroker.StartAsync();
        await using var probe = await MqttProbe.ConnectAsync(mosquitto.Port);
        await probe.SubscribeAsync(Topics.Commands("gone1"), MqttQualityOfServiceLevel.AtLeastOnce);
        await using var connection = new ManagedMqttConnection(new MqttConnectionOptions { Brokers = [BrokerAddress.Parse(mosquitto.Url)], ClientId = "sender-gone1" },
            Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);
        await using var sender = new OrderedCommandSender(connection, new OrderedCommandSenderOptions
        {
            RetryInterval = TimeSpan.FromMilliseconds(200),
            Expiry = TimeSpan.FromSeconds(1),
        });
        connection.MessageReceived = (topic, payload) => Task.FromResult(sender.TryHandleAck(topic, payload));
        await connection.SubscribeAsync(Topics.AllAcks, MqttQualityOfServiceLevel.AtLeastOnce);
        await connection.StartAsync(CancellationToken.None);

        CommandMessage? first = null;
        Assert.Equal(OrderedCommandOutcome.Expired, await sender.SendAsync("gone1", new CommandMessage(true), c => first = c).WaitAsync(TimeSpan.FromSeconds(20)));
        var attempts = probe.Received.Count(m => m.Payload.Contains($"\"{first!.Id}\"", StringComparison.Ordinal));
        Assert.True(attempts >= 3, $"expected retries every 200 ms, saw {attempts} sends");
        Assert.All(probe.Received, m => Assert.Equal(first!.ToString(), m.Payload)); // Retries are the same command.

        // Somebody acknowledges the next one (as a device would): it completes, with a higher seq.
        CommandMessage? second = null;
        var pending = sender.SendAsync("gone1", new CommandMessage(false), c => second = c);
        await probe.WaitForAsync(m => m.Payload.Contains($"\"{second!.Id}\"", StringComparison.Ordinal));
        await probe.PublishAsync(Topics.Acks("gone1"), new CommandAck(second!.Id!, second.Seq!.Value).ToString(), MqttQualityOfServiceLevel.AtLeastOnce);
        Assert.Equal(OrderedCommandOutcome.Acknowledged, await pending.WaitAsync(TimeSpan.FromSeconds(20)));
        Assert.True(second.Seq > first!.Seq);
    }
}
