using System.Net.Security;
using System.Security.Cryptography.X509Certificates;
using MQTTnet;
using MQTTnet.Formatter;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>HTTPS (<c>Http:HttpsPort</c>): the pages and MQTT over secure WebSocket at <c>wss://HOST:PORT/mqtt</c>, with the TLS listener's certificate.</summary>
public class SecureWebSocketTests
{
    static string Peer(string name) => Path.Combine(AppContext.BaseDirectory, "Peers", name);

    /// <summary>True when <paramref name="certificate"/> chains to the broker's development certificate and names the host asked for.</summary>
    static bool TrustedBy(string pem, X509Certificate? certificate, SslPolicyErrors errors)
    {
        if (certificate is null || errors.HasFlag(SslPolicyErrors.RemoteCertificateNameMismatch))
        {
            return false;
        }
        using var trusted = X509Certificate2.CreateFromPem(File.ReadAllText(pem));
        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.Add(trusted);
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        using var presented = X509CertificateLoader.LoadCertificate(certificate.GetRawCertData());
        return chain.Build(presented);
    }

    [Fact]
    public async Task Paho_and_mqttnet_talk_over_wss_trusting_the_development_certificate()
    {
        var python = External.RequirePahoPython();
        using var data = new DataDir();
        var httpsPort = Ports.Free();
        var (broker, _, _) = await NightlightCli.StartBrokerAsync("--data", data.Path, "--https-port", httpsPort.ToString());
        await using (broker)
        {
            var pem = Path.Combine(data.Path, "dev-broker.pem");
            await broker.WaitForLineAsync($"wss://localhost:{httpsPort}/mqtt");

            // The pages come over HTTPS too, from a client that checks the certificate.
            using (var https = new HttpClient(new HttpClientHandler { ServerCertificateCustomValidationCallback = (_, c, _, e) => TrustedBy(pem, c, e) }))
            {
                var page = await https.GetStringAsync($"https://localhost:{httpsPort}/");
                Assert.Contains("<html", page, StringComparison.OrdinalIgnoreCase);
            }

            // MQTTnet's WebSocket channel with TLS, validating the chain against the development certificate.
            var mqttnet = new MqttClientFactory().CreateMqttClient();
            var received = new System.Collections.Concurrent.ConcurrentQueue<string>();
            mqttnet.ApplicationMessageReceivedAsync += e =>
            {
                received.Enqueue(e.ApplicationMessage.Topic + " " + e.ApplicationMessage.ConvertPayloadToString());
                return Task.CompletedTask;
            };
            var options = new MqttClientOptionsBuilder().WithProtocolVersion(MqttProtocolVersion.V500).WithClientId("wss-server")
                .WithWebSocketServer(o => o.WithUri($"wss://localhost:{httpsPort}/mqtt"))
                .WithTlsOptions(t => t.UseTls().WithCertificateValidationHandler(a => TrustedBy(pem, a.Certificate, a.SslPolicyErrors)))
                .WithTimeout(TimeSpan.FromSeconds(20)).Build();
            using (mqttnet)
            {
                Assert.Equal(MqttClientConnectResultCode.Success, (await mqttnet.ConnectAsync(options)).ResultCode);
                await mqttnet.SubscribeAsync("wss1/telemetry");

                // paho-mqtt 1.6 over wss with tls_set(ca_certs=the development certificate): it connects, publishes, and is answered.
                await using var paho = ProcessRunner.Start(python, [Peer("wss_device.py"), "wss1", "localhost", httpsPort.ToString(), pem, "30"]);
                await paho.WaitForLineAsync("subscribed", TimeSpan.FromSeconds(30));
                var deadline = DateTime.UtcNow.AddSeconds(20);
                while (!received.Any(m => m.StartsWith("wss1/telemetry", StringComparison.Ordinal)))
                {
                    Assert.True(DateTime.UtcNow < deadline, "no telemetry from paho over wss; paho said: " + paho.Stdout + paho.Stderr);
                    await Task.Delay(100);
                }
                await mqttnet.PublishStringAsync("wss1/commands", "{\"led_on\": true}");
                await paho.WaitForLineAsync("received wss1/commands {\"led_on\": true}");
                await mqttnet.DisconnectAsync();
            }

            // Without the development certificate (system CAs only) paho refuses the broker: validation is on.
            var untrusting = await Task.Run(() => ProcessRunner.Run(python, [Peer("wss_device.py"), "wss2", "localhost", httpsPort.ToString(), "-", "1"], TimeSpan.FromSeconds(30)));
            Assert.Equal(3, untrusting.ExitCode);
            Assert.Contains("CERTIFICATE_VERIFY_FAILED", untrusting.Stdout);
            Assert.False(broker.HasExited);
        }
    }

    [Fact]
    public async Task A_device_talks_over_wss_trusting_the_development_certificate_with_cafile()
    {
        using var data = new DataDir();
        var httpsPort = Ports.Free();
        var (broker, port, _) = await NightlightCli.StartBrokerAsync("--data", data.Path, "--https-port", httpsPort.ToString());
        await using (broker)
        {
            var pem = Path.Combine(data.Path, "dev-broker.pem");
            await broker.WaitForLineAsync($"wss://localhost:{httpsPort}/mqtt");
            await using var watcher = await MqttProbe.ConnectAsync(port);
            await watcher.SubscribeAsync("wss3/telemetry");

            await using var device = NightlightCli.Start("device", "--broker", $"wss://localhost:{httpsPort}/mqtt", "--cafile", pem,
                "--id", "wss3", "--interval", "200ms", "--light", "61");
            await watcher.WaitForAsync(m => m.Topic == "wss3/telemetry" && m.Payload.StartsWith("{\"light\": 61", StringComparison.Ordinal),
                timeout: TimeSpan.FromSeconds(30));
            await watcher.PublishAsync("wss3/commands", "{\"led_on\": true}");
            await device.WaitForLineAsync("LED switched ON", TimeSpan.FromSeconds(30));
        }
    }
}
