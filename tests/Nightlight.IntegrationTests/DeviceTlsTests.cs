using MQTTnet.Protocol;
using Nightlight.Device;
using Nightlight.Mqtt;
using Nightlight.Protocol;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>
/// The device SDK's TLS and credential options against our own broker's TLS listener, end to end: the SDK and
/// <c>nightlight device</c> trust the broker's development certificate with <c>--cafile</c> and sign in with the
/// identity <c>nightlight devices add</c> made; a server identity watches on the plain port.
/// </summary>
public class DeviceTlsTests
{
    static readonly TimeSpan Long = TimeSpan.FromSeconds(30);

    [Trait("Speed", "Slow")]
    [Fact]
    public async Task A_device_speaks_tls_with_cafile_and_its_credentials_to_the_embedded_broker_through_the_sdk_and_the_cli()
    {
        using var data = new DataDir();
        var deviceSecret = data.Add("tls1");
        var serverSecret = data.Add("watcher", "add-server");
        var tlsPort = Ports.Free();
        var (broker, port, _) = await NightlightCli.StartBrokerAsync("--data", data.Path, "--tls-port", tlsPort.ToString());
        await using var _broker = broker;
        var pem = Path.Combine(data.Path, "dev-broker.pem");
        await broker.WaitForLineAsync($"clients must trust {pem}", Long);
        await using var watcher = await MqttProbe.ConnectAsAsync(port, "watcher#probe", "watcher", serverSecret);
        await watcher.SubscribeAsync(Topics.Telemetry("tls1"), MqttQualityOfServiceLevel.AtLeastOnce);

        // The SDK: TLS trusting only the broker's certificate, with the device's user name and secret.
        var applied = new TaskCompletionSource<CommandMessage>(TaskCreationOptions.RunContinuationsAsynchronously);
        await using (var client = new DeviceClient(new DeviceClientOptions
        {
            Id = "tls1",
            Connection = new MqttConnectionOptions
            {
                Brokers = [BrokerAddress.Parse($"mqtt://localhost:{tlsPort}")],
                UseTls = true,
                CaFile = pem,
                Username = "tls1",
                Password = deviceSecret,
            },
        }, (command, _) =>
        {
            applied.TrySetResult(command);
            return ValueTask.CompletedTask;
        }))
        {
            client.Start();
            await client.WaitConnectedAsync(CancellationToken.None).WaitAsync(Long);
            Assert.NotNull(await client.SendAsync("light", 42, CancellationToken.None));
            await watcher.WaitForAsync(m => m.Topic == "tls1/telemetry" && m.Payload.StartsWith("{\"light\": 42, \"seq\": 1,", StringComparison.Ordinal), timeout: Long);
            await watcher.PublishAsync(Topics.Commands("tls1"), "{\"led_on\": true}", MqttQualityOfServiceLevel.AtLeastOnce);
            Assert.True((await applied.Task.WaitAsync(Long)).LedOn);
        }

        // The CLI, the same way.
        await using var device = NightlightCli.Start("device", "--broker", $"mqtt://localhost:{tlsPort}", "--cafile", pem, "--username", "tls1",
            "--password", deviceSecret, "--id", "tls1", "--interval", "200ms", "--light", "77");
        await watcher.WaitForAsync(m => m.Topic == "tls1/telemetry" && m.Payload.StartsWith("{\"light\": 77,", StringComparison.Ordinal), timeout: Long);
        await watcher.PublishAsync(Topics.Commands("tls1"), "{\"led_on\": true}", MqttQualityOfServiceLevel.AtLeastOnce);
        await device.WaitForLineAsync("LED switched ON", Long);
        Assert.DoesNotContain(deviceSecret, device.Stdout + device.Stderr);

        // Without the CA file the device does not trust the broker and never gets in.
        await using var untrusting = NightlightCli.Start("device", "--broker", $"mqtt://localhost:{tlsPort}", "--tls", "--username", "tls1",
            "--password", deviceSecret, "--id", "tls1", "--interval", "200ms", "--light", "88");
        await untrusting.WaitForErrorLineAsync("tls1nightlight_client", Long);
        await Task.Delay(2000);
        Assert.DoesNotContain(watcher.Received, m => m.Payload.StartsWith("{\"light\": 88,", StringComparison.Ordinal));
        Assert.DoesNotContain(untrusting.StderrLines, l => l.Contains("connected to", StringComparison.Ordinal));
    }
}
