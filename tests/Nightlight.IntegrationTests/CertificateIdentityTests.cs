using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using MQTTnet;
using MQTTnet.Formatter;
using MQTTnet.Protocol;
using Nightlight.Security;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>
/// Devices that authenticate with an X.509 client certificate from Nightlight's local device CA
/// (<c>nightlight devices add ID --cert</c>) on the embedded broker's TLS listener.
/// </summary>
[System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
public class CertificateIdentityTests
{
    /// <summary>Runs <c>devices add ID --cert</c> and returns the certificate and key paths it printed.</summary>
    static (string Certificate, string Key) IssueCertificate(DataDir data, string id, params string[] extra)
    {
        var (code, stdout, stderr) = data.Devices(["add", id, "--cert", .. extra]);
        Assert.True(code == 0, $"devices add {id} --cert failed ({code}): {stdout} {stderr}");
        string PathAfter(string label) => stdout.Split('\n').Select(l => l.Trim()).First(l => l.StartsWith(label, StringComparison.Ordinal))[label.Length..].Trim().Split(' ')[0];
        var certificate = PathAfter("certificate");
        var key = PathAfter("key");
        Assert.True(File.Exists(certificate), stdout);
        Assert.True(File.Exists(key), stdout);
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(key));
        return (certificate, key);
    }

    /// <summary>An MQTTnet client over TLS that trusts only the broker's development certificate and presents <paramref name="certificate"/>.</summary>
    static Task<MqttProbe> ConnectWithCertificateAsync(int tlsPort, string clientId, X509Certificate2 certificate, string brokerPem) =>
        MqttProbe.ConnectAsync(tlsPort, MqttProtocolVersion.V500, clientId, "localhost", b => b.WithTlsOptions(t => t.UseTls()
            .WithClientCertificates([certificate])
            .WithCertificateValidationHandler(args =>
            {
                using var trusted = X509Certificate2.CreateFromPem(File.ReadAllText(brokerPem));
                using var chain = new X509Chain();
                chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
                chain.ChainPolicy.CustomTrustStore.Add(trusted);
                chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
                using var presented = X509CertificateLoader.LoadCertificate(args.Certificate.GetRawCertData());
                return chain.Build(presented);
            })));

    static X509Certificate2 Load(string certificate, string key)
    {
        using var pem = X509Certificate2.CreateFromPemFile(certificate, key);
        return X509CertificateLoader.LoadPkcs12(pem.Export(X509ContentType.Pkcs12), null);
    }

    static async Task<MqttClientConnectResultCode> RefusalAsync(int tlsPort, string clientId, X509Certificate2 certificate, string brokerPem)
    {
        try
        {
            await using var probe = await ConnectWithCertificateAsync(tlsPort, clientId, certificate, brokerPem);
            return MqttClientConnectResultCode.Success;
        }
        catch (ConnectRefusedException e)
        {
            return e.ResultCode;
        }
    }

    static async Task EventuallyAsync(Func<Task<bool>> condition, string what)
    {
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (!await condition())
        {
            Assert.True(DateTime.UtcNow < deadline, $"waited 20 s for {what}");
            await Task.Delay(200);
        }
    }

    [Fact]
    public async Task Sdk_device_with_a_certificate_gets_its_telemetry_answered_by_the_server()
    {
        using var data = new DataDir();
        var (certificate, key) = IssueCertificate(data, "kitchen");
        Assert.StartsWith(Path.Combine(data.Path, "certificates"), certificate);
        Assert.True(File.Exists(Path.Combine(data.Path, "device-ca.pem")));
        var serverSecret = data.Add("backend", "add-server");
        var tlsPort = Ports.Free();
        var (broker, port, _) = await NightlightCli.StartBrokerAsync("--data", data.Path, "--tls-port", tlsPort.ToString());
        await using (broker)
        {
            var brokerPem = Path.Combine(data.Path, "dev-broker.pem");
            await using var server = NightlightCli.Start("server", "--broker", $"mqtt://127.0.0.1:{port}", "--username", "backend", "--password", serverSecret);
            await server.WaitForLineAsync("Server ", TimeSpan.FromSeconds(30));
            await using var device = NightlightCli.Start("device", "--id", "kitchen", "--broker", $"mqtts://localhost:{tlsPort}",
                "--cert", certificate, "--key", key, "--cafile", brokerPem, "--light", "100", "--interval", "300ms");
            // Dark (100 < 300): the server's answer switches the LED on, so telemetry went out and the command came back over TLS.
            await device.WaitForLineAsync("LED switched ON", TimeSpan.FromSeconds(30));
            Assert.DoesNotContain("Refused", broker.Stderr);
        }
    }

    [Fact]
    public async Task Mosquitto_clients_with_a_device_certificate_reach_only_their_own_topics()
    {
        using var data = new DataDir();
        var (certificate, key) = IssueCertificate(data, "kitchen");
        var serverSecret = data.Add("backend", "add-server");
        var tlsPort = Ports.Free();
        var (broker, port, _) = await NightlightCli.StartBrokerAsync("--data", data.Path, "--tls-port", tlsPort.ToString());
        await using (broker)
        {
            var brokerPem = Path.Combine(data.Path, "dev-broker.pem");
            await using var server = await MqttProbe.ConnectAsAsync(port, "backend#watch", "backend", serverSecret);
            await server.SubscribeAsync("+/telemetry");
            var pub = External.Require("mosquitto_pub", "mosquitto-clients");
            (int Code, string Output) Publish(string clientId, string topic, string payload)
            {
                var (code, stdout, stderr) = ProcessRunner.Run(pub, ["-h", "localhost", "-p", tlsPort.ToString(), "--cafile", brokerPem,
                    "--cert", certificate, "--key", key, "-i", clientId, "-V", "mqttv5", "-q", "1", "-t", topic, "-m", payload], TimeSpan.FromSeconds(20));
                return (code, stdout + stderr);
            }

            var own = await Task.Run(() => Publish("kitchennightlight_client", "kitchen/telemetry", "{\"light\": 42}"));
            Assert.True(own.Code == 0, $"mosquitto_pub with the kitchen certificate failed ({own.Code}): {own.Output}");
            await server.WaitForAsync(m => m.Topic == "kitchen/telemetry" && m.Payload.Contains("42"));

            // Another device's topic: MQTT 5 PUBACK "not authorized"; nothing reaches the server.
            var other = await Task.Run(() => Publish("kitchennightlight_client", "hall/telemetry", "{\"light\": 43}"));
            Assert.Contains("not authori", other.Output, StringComparison.OrdinalIgnoreCase);
            await broker.WaitForErrorLineAsync("Refused publish of client kitchennightlight_client to hall/telemetry");

            // Another device's client id: the CONNECT itself is refused.
            var impostor = await Task.Run(() => Publish("hallnightlight_client", "hall/telemetry", "{\"light\": 44}"));
            Assert.True(impostor.Code != 0, $"mosquitto_pub as hall with kitchen's certificate succeeded: {impostor.Output}");
            await broker.WaitForErrorLineAsync("Refused connection of client hallnightlight_client");
            Assert.DoesNotContain(server.Received, m => m.Topic == "hall/telemetry");
        }
    }

    [Fact]
    public async Task A_certificate_for_one_device_cannot_act_as_another_and_revoked_or_expired_or_foreign_certificates_are_refused()
    {
        using var data = new DataDir();
        var (kitchenCertificate, kitchenKey) = IssueCertificate(data, "kitchen");
        var (hallCertificate, hallKey) = IssueCertificate(data, "hall", "--out", Path.Combine(data.Path, "elsewhere"));
        var tlsPort = Ports.Free();
        var (broker, _, _) = await NightlightCli.StartBrokerAsync("--data", data.Path, "--tls-port", tlsPort.ToString());
        await using (broker)
        {
            var brokerPem = Path.Combine(data.Path, "dev-broker.pem");
            using var kitchen = Load(kitchenCertificate, kitchenKey);
            using var hall = Load(hallCertificate, hallKey);

            // Kitchen's certificate with hall's client id: refused at CONNECT.
            Assert.Equal(MqttClientConnectResultCode.ClientIdentifierNotValid, await RefusalAsync(tlsPort, "hallnightlight_client", kitchen, brokerPem));

            await using (var device = await ConnectWithCertificateAsync(tlsPort, "kitchennightlight_client", kitchen, brokerPem))
            {
                var publish = await device.Client.PublishAsync(new MqttApplicationMessageBuilder().WithTopic("hall/telemetry").WithPayload("{\"light\": 1}")
                    .WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build());
                Assert.Equal(MqttClientPublishReasonCode.NotAuthorized, publish.ReasonCode);
                var subscribe = await device.Client.SubscribeAsync(new MqttClientSubscribeOptionsBuilder().WithTopicFilter("hall/commands").Build());
                Assert.Equal(MqttClientSubscribeResultCode.NotAuthorized, subscribe.Items.Single().ResultCode);
                var ownPublish = await device.Client.PublishAsync(new MqttApplicationMessageBuilder().WithTopic("kitchen/telemetry").WithPayload("{\"light\": 1}")
                    .WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build());
                Assert.Equal(MqttClientPublishReasonCode.Success, ownPublish.ReasonCode);

                // Revoked while connected: new connections are refused, and the open one is closed.
                var (code, stdout, stderr) = data.Devices("revoke-cert", "kitchen");
                Assert.True(code == 0, stdout + stderr);
                Assert.Contains("Revoked 1 certificate of kitchen", stdout);
                await EventuallyAsync(() => Task.FromResult(!device.Client.IsConnected), "the revoked certificate's open connection to be closed");
                await broker.WaitForErrorLineAsync("Identity kitchen was changed (rotated or revoked): closed its 1 connections");
            }
            Assert.Equal(MqttClientConnectResultCode.NotAuthorized, await RefusalAsync(tlsPort, "kitchennightlight_client", kitchen, brokerPem));
            await broker.WaitForErrorLineAsync("is revoked or was not issued to it");

            // Removing the device revokes its certificates too.
            Assert.Equal(MqttClientConnectResultCode.Success, await RefusalAsync(tlsPort, "hall#1", hall, brokerPem));
            Assert.Equal(0, data.Devices("remove", "hall").ExitCode);
            // The broker rereads the identities file when it changes, within about a second.
            await EventuallyAsync(async () => await RefusalAsync(tlsPort, "hall#2", hall, brokerPem) == MqttClientConnectResultCode.NotAuthorized,
                "the removed device's certificate to be refused");

            // An expired certificate from the same CA, still listed for its device: refused for its dates.
            var authority = new DeviceCertificateAuthority(data.Path);
            var expired = authority.Issue("porch", Path.Combine(data.Path, "expired"), DateTimeOffset.UtcNow.AddDays(-10), DateTimeOffset.UtcNow.AddHours(-1));
            DeviceIdentities.InDirectory(data.Path).AddCertificate("porch", expired.Thumbprint, expired.NotAfter);
            using var porch = Load(expired.CertificatePath, expired.KeyPath);
            Assert.Equal(MqttClientConnectResultCode.NotAuthorized, await RefusalAsync(tlsPort, "porch", porch, brokerPem));
            await broker.WaitForErrorLineAsync("certificate expired");

            // A certificate naming kitchen but signed by someone else's CA: refused.
            using var foreignKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
            var request = new CertificateRequest("CN=kitchen", foreignKey, HashAlgorithmName.SHA256);
            request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.2")], false));
            using var selfSigned = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(30));
            using var foreign = X509CertificateLoader.LoadPkcs12(selfSigned.Export(X509ContentType.Pkcs12), null);
            Assert.Equal(MqttClientConnectResultCode.NotAuthorized, await RefusalAsync(tlsPort, "kitchen", foreign, brokerPem));
            await broker.WaitForErrorLineAsync("not signed by the device CA");
            Assert.False(broker.HasExited);
        }
    }
}
