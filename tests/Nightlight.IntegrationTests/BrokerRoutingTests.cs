using MQTTnet;
using MQTTnet.Formatter;
using MQTTnet.Protocol;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>
/// The broker core's topic tree delivers each message to exactly the sessions whose filters match it: the cases an
/// index could get wrong (overlapping filters, an unsubscription, a session that ended, no-local).
/// </summary>
public class BrokerRoutingTests
{
    [Fact]
    public async Task Exact_and_wildcard_subscribers_get_one_copy_each_and_an_unsubscribed_client_gets_none()
    {
        var (broker, port, _) = await NightlightCli.StartBrokerAsync();
        await using (broker)
        {
            await using var exact = await MqttProbe.ConnectAsync(port, clientId: "exact");
            await exact.SubscribeAsync("lamp1/commands");
            await using var both = await MqttProbe.ConnectAsync(port, clientId: "both");
            await both.SubscribeAsync("lamp1/commands");
            await both.SubscribeAsync("+/commands");
            await using var leaving = await MqttProbe.ConnectAsync(port, clientId: "leaving");
            await leaving.SubscribeAsync("lamp1/commands");
            await leaving.Client.UnsubscribeAsync(new MqttClientUnsubscribeOptionsBuilder().WithTopicFilter("lamp1/commands").Build());
            await using var other = await MqttProbe.ConnectAsync(port, clientId: "other");
            await other.SubscribeAsync("lamp2/commands");
            await using var publisher = await MqttProbe.ConnectAsync(port, clientId: "publisher");

            await publisher.PublishAsync("lamp1/commands", "{\"led_on\": true}", MqttQualityOfServiceLevel.AtLeastOnce);
            await publisher.PublishAsync("lamp2/commands", "{\"led_on\": false}", MqttQualityOfServiceLevel.AtLeastOnce);

            await exact.WaitForAsync(m => m.Topic == "lamp1/commands");
            await other.WaitForAsync(m => m.Topic == "lamp2/commands");
            await both.WaitForAsync(m => m.Topic == "lamp1/commands");
            // Give a second copy or a stray delivery time to show up before asserting it never came.
            await publisher.PublishAsync("lamp3/commands", "marker", MqttQualityOfServiceLevel.AtLeastOnce);
            await both.WaitForAsync(m => m.Topic == "lamp3/commands");
            Assert.Single(both.Received, m => m.Topic == "lamp1/commands");
            Assert.DoesNotContain(exact.Received, m => m.Topic != "lamp1/commands");
            Assert.Empty(leaving.Received);
        }
    }

    [Fact]
    public async Task A_session_that_ends_leaves_no_subscription_behind()
    {
        var (broker, port, _) = await NightlightCli.StartBrokerAsync();
        await using (broker)
        {
            await using (var first = await MqttProbe.ConnectAsync(port, clientId: "returning"))
            {
                await first.SubscribeAsync("lamp9/commands");
            }
            // Same client id, clean session, no subscription this time: nothing may arrive.
            await using var again = await MqttProbe.ConnectAsync(port, clientId: "returning");
            await using var watcher = await MqttProbe.ConnectAsync(port, clientId: "watcher");
            await watcher.SubscribeAsync("#");
            await using var publisher = await MqttProbe.ConnectAsync(port, clientId: "publisher");
            await publisher.PublishAsync("lamp9/commands", "{\"led_on\": true}", MqttQualityOfServiceLevel.AtLeastOnce);
            await watcher.WaitForAsync(m => m.Topic == "lamp9/commands");
            await publisher.PublishAsync("lamp9/marker", "m", MqttQualityOfServiceLevel.AtLeastOnce);
            await watcher.WaitForAsync(m => m.Topic == "lamp9/marker");
            Assert.Empty(again.Received);
        }
    }

    [Fact]
    public async Task An_mqtt5_publish_nobody_subscribed_to_is_answered_no_matching_subscribers_and_no_local_is_kept()
    {
        var (broker, port, _) = await NightlightCli.StartBrokerAsync();
        await using (broker)
        {
            await using var publisher = await MqttProbe.ConnectAsync(port, MqttProtocolVersion.V500, clientId: "v5pub");
            var unheard = await publisher.Client.PublishAsync(new MqttApplicationMessageBuilder().WithTopic("nobody/listens/here").WithPayload("{}")
                .WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build());
            Assert.Equal(MqttClientPublishReasonCode.NoMatchingSubscribers, unheard.ReasonCode);

            await publisher.Client.SubscribeAsync(new MqttClientSubscribeOptionsBuilder()
                .WithTopicFilter(f => f.WithTopic("echo/+").WithNoLocal(true).WithAtLeastOnceQoS()).Build());
            await using var listener = await MqttProbe.ConnectAsync(port, MqttProtocolVersion.V500, clientId: "v5sub");
            await listener.SubscribeAsync("echo/+");
            var heard = await publisher.Client.PublishAsync(new MqttApplicationMessageBuilder().WithTopic("echo/1").WithPayload("x")
                .WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build());
            Assert.Equal(MqttClientPublishReasonCode.Success, heard.ReasonCode);
            await listener.WaitForAsync(m => m.Topic == "echo/1");
            await listener.PublishAsync("echo/2", "y", MqttQualityOfServiceLevel.AtLeastOnce);
            await publisher.WaitForAsync(m => m.Topic == "echo/2");
            Assert.DoesNotContain(publisher.Received, m => m.Topic == "echo/1");
        }
    }
}
