using MQTTnet;
using MQTTnet.Formatter;
using MQTTnet.Protocol;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>
/// The session store of <c>nightlight broker</c> (<c>{data}/broker</c>) under kill -9 and damage, seen by MQTTnet clients:
/// 100 acknowledged messages come back in order and once, and a damaged record costs that record only. The black-box
/// kill -9 tests that run against Mosquitto too are in Broker/BrokerPersistenceTests.cs.
/// </summary>
public class BrokerStoreTests : IAsyncDisposable
{
    readonly TempDirectory _data = new("broker-data");
    readonly int _mqtt = Ports.Free();
    readonly int _http = Ports.Free();
    ProcessRunner? _broker;

    public async ValueTask DisposeAsync()
    {
        if (_broker is not null)
        {
            await _broker.DisposeAsync();
        }
        _data.Dispose();
    }

    async Task<ProcessRunner> StartBrokerAsync()
    {
        var broker = NightlightCli.Start("broker", "--mqtt-port", _mqtt.ToString(), "--http-port", _http.ToString(), "--data", _data.Path);
        await broker.StopIfNotReadyAsync(p => p.WaitForErrorLineAsync("MQTT broker listening", TimeSpan.FromSeconds(30)));
        _broker = broker;
        return broker;
    }

    async Task KillBrokerAsync()
    {
        _broker!.Signal("KILL");
        Assert.True(await _broker.WaitForExitAsync(TimeSpan.FromSeconds(20)), "the broker did not die");
        await _broker.DisposeAsync();
        _broker = null;
    }

    /// <summary>The session "keeper": persistent (3.1.1 clean session 0, or 5 with a day's expiry), subscribed to x/# at QoS 1.</summary>
    Task<MqttProbe> ConnectKeeperAsync(MqttProtocolVersion version) =>
        MqttProbe.ConnectAsync(_mqtt, version, "keeper", configure: b => b.WithCleanSession(false).WithSessionExpiryInterval(86_400));

    [Theory]
    [InlineData(MqttProtocolVersion.V311)]
    [InlineData(MqttProtocolVersion.V500)]
    public async Task Queued_qos1_messages_and_retained_messages_survive_kill_9_in_order_and_once(MqttProtocolVersion version)
    {
        await StartBrokerAsync();
        await using (var keeper = await ConnectKeeperAsync(version))
        {
            await keeper.SubscribeAsync("x/#", MqttQualityOfServiceLevel.AtLeastOnce);
        }
        await using (var publisher = await MqttProbe.ConnectAsync(_mqtt, version, "publisher"))
        {
            for (var i = 1; i <= 100; i++)
            {
                // Returns once the broker's PUBACK arrived: from then on the broker answers for the message.
                await publisher.PublishAsync($"x/{i}", $"m{i:D3}", MqttQualityOfServiceLevel.AtLeastOnce);
            }
            await publisher.PublishAsync("status/lamp1", "online", MqttQualityOfServiceLevel.AtLeastOnce, retain: true);
        }

        await KillBrokerAsync();
        var broker = await StartBrokerAsync();

        await using (var keeper = await ConnectKeeperAsync(version))
        {
            await keeper.WaitForAsync(m => m.Topic.StartsWith("x/", StringComparison.Ordinal), count: 100, timeout: TimeSpan.FromSeconds(30));
            // Anything sent twice would come right behind the rest; give it time to show.
            await Task.Delay(1000);
            Assert.Equal(Enumerable.Range(1, 100).Select(i => $"x/{i}=m{i:D3}"), keeper.Received.Select(m => $"{m.Topic}={m.Payload}"));
        }
        await using var late = await MqttProbe.ConnectAsync(_mqtt, version, "late");
        await late.SubscribeAsync("status/+");
        var retained = await late.WaitForAsync(m => m.Topic == "status/lamp1");
        Assert.Equal(("online", true), (retained[0].Payload, retained[0].Retained));
        Assert.DoesNotContain(broker.StderrLines, l => l.Contains("damaged", StringComparison.Ordinal));
    }

    [Fact]
    public async Task A_garbled_record_in_the_store_loses_only_that_message_and_is_counted()
    {
        await StartBrokerAsync();
        await using (var keeper = await ConnectKeeperAsync(MqttProtocolVersion.V311))
        {
            await keeper.SubscribeAsync("x/#", MqttQualityOfServiceLevel.AtLeastOnce);
        }
        await using (var publisher = await MqttProbe.ConnectAsync(_mqtt, MqttProtocolVersion.V311, "publisher"))
        {
            for (var i = 1; i <= 10; i++)
            {
                await publisher.PublishAsync($"x/{i}", $"payload-{i:D3}", MqttQualityOfServiceLevel.AtLeastOnce);
            }
        }
        await KillBrokerAsync();

        // A flipped bit inside the record that holds message 5, as a bad sector would leave it.
        var store = Path.Combine(_data.Path, "broker");
        var damaged = 0;
        foreach (var file in Directory.GetFiles(store))
        {
            var bytes = File.ReadAllBytes(file);
            var at = bytes.AsSpan().IndexOf("payload-005"u8);
            if (at >= 0)
            {
                bytes[at + 3] ^= 0x10;
                File.WriteAllBytes(file, bytes);
                damaged++;
            }
        }
        Assert.Equal(1, damaged);

        var broker = await StartBrokerAsync();
        await broker.WaitForErrorLineAsync("skipped 1 damaged records");
        await using (var keeper = await ConnectKeeperAsync(MqttProtocolVersion.V311))
        {
            await keeper.WaitForAsync(m => m.Topic.StartsWith("x/", StringComparison.Ordinal), count: 9, timeout: TimeSpan.FromSeconds(30));
            await Task.Delay(1000);
            Assert.Equal(Enumerable.Range(1, 10).Where(i => i != 5).Select(i => $"payload-{i:D3}"), keeper.Received.Select(m => m.Payload));
        }
        using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{_http}") };
        var metrics = await http.GetStringAsync("/metrics", TestContext.Current.CancellationToken);
        var counter = metrics.Split('\n').FirstOrDefault(l => l.StartsWith("nightlight_broker_store_damaged", StringComparison.Ordinal));
        Assert.True(counter is not null, "no nightlight_broker_store_damaged in /metrics");
        Assert.Equal("1", counter.Split(' ')[^1]);
    }
}
