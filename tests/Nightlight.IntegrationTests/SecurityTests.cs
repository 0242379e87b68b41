using System.Security.Cryptography.X509Certificates;
using MQTTnet;
using MQTTnet.Formatter;
using MQTTnet.Protocol;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>Device identities, per-device access and TLS on the real <c>nightlight broker</c> and <c>nightlight devices</c>.</summary>
[System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
public class SecurityTests
{
    static Task<(ProcessRunner Process, int MqttPort, int HttpPort)> StartBrokerAsync(DataDir data, params string[] extra) =>
        NightlightCli.StartBrokerAsync(["--data", data.Path, .. extra]);

    /// <summary>The broker's answer to a CONNECT: Success, or the refusal's code.</summary>
    static async Task<MqttClientConnectResultCode> RefusalAsync(int port, string clientId, string? user, string? password, MqttProtocolVersion version)
    {
        try
        {
            await using var probe = await MqttProbe.ConnectAsAsync(port, clientId, user, password, version);
            return MqttClientConnectResultCode.Success;
        }
        catch (ConnectRefusedException e)
        {
            return e.ResultCode;
        }
    }

    [Fact]
    public void Devices_cli_prints_a_secret_once_and_stores_only_a_salted_hash()
    {
        using var data = new DataDir();
        var secret = data.Add("kitchen");
        Assert.True(secret.Length >= 40, secret);
        var file = Path.Combine(data.Path, "identities.json");
        var stored = File.ReadAllText(file);
        Assert.Contains("\"kitchen\"", stored);
        Assert.DoesNotContain(secret, stored);
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(file));

        var (code, list, _) = data.Devices("list");
        Assert.Equal(0, code);
        Assert.Contains("kitchen", list);
        Assert.DoesNotContain(secret, list);

        // The same id twice, and ids that are not one topic level, are refused with exit code 2.
        foreach (var bad in new[] { "kitchen", "a/b", "a+b", "a#b", "$sys", "has space" })
        {
            var (badCode, _, stderr) = data.Devices("add", bad);
            Assert.True(badCode == 2, $"devices add '{bad}' exited {badCode}: {stderr}");
            Assert.StartsWith("error: ", stderr.Trim());
        }

        Assert.Equal(0, data.Devices("remove", "kitchen").ExitCode);
        Assert.Contains("No identities", data.Devices("list").Stdout);
        Assert.Equal(2, data.Devices("rotate", "kitchen").ExitCode);
    }

    /// <summary>
    /// A device named in a server client id form could never connect (the broker keeps those ids for servers), so
    /// adding one must fail at once instead of printing a secret that will never work.
    /// </summary>
    [Fact]
    public void Devices_cli_refuses_a_device_id_in_a_server_client_id_form()
    {
        using var data = new DataDir();
        foreach (var (command, bad) in new[]
        {
            ("add", "kitchennightlight_server"), ("add", "nightlight_server"), ("add", "nightlight_server-eu"),
            ("add --cert", "nightlight_server-2"),
        })
        {
            string[] args = [.. command.Split(' '), bad];
            var (code, stdout, stderr) = data.Devices(args);
            var lines = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            Assert.True(code != 0, $"devices {command} '{bad}' succeeded: {stdout}");
            Assert.True(lines.Length == 1 && lines[0].StartsWith("error: ", StringComparison.Ordinal) && lines[0].Contains($"'{bad}'", StringComparison.Ordinal)
                && lines[0].Contains("server", StringComparison.Ordinal), $"devices {command} '{bad}': expected one error line naming it, got: {stderr}");
            Assert.DoesNotContain("secret", stdout, StringComparison.OrdinalIgnoreCase);
        }
        Assert.Contains("No identities", data.Devices("list").Stdout);
        // The forms stay open to servers, and a device id that only resembles them is fine.
        Assert.Equal(0, data.Devices("add-server", "nightlight_server-eu").ExitCode);
        Assert.Equal(0, data.Devices("add", "nightlight_servers").ExitCode);
    }

    [Theory]
    [InlineData(MqttProtocolVersion.V311)]
    [InlineData(MqttProtocolVersion.V500)]
    public async Task A_device_connects_only_with_its_secret_and_a_client_id_of_its_own(MqttProtocolVersion version)
    {
        using var data = new DataDir();
        var secret = data.Add("kitchen");
        data.Add("hall");
        var (broker, port, _) = await StartBrokerAsync(data);
        await using (broker)
        {
            var v5 = version == MqttProtocolVersion.V500;
            Assert.Equal(v5 ? MqttClientConnectResultCode.NotAuthorized : MqttClientConnectResultCode.NotAuthorized,
                await RefusalAsync(port, "kitchennightlight_client", null, null, version));
            Assert.Equal(MqttClientConnectResultCode.BadUserNameOrPassword, await RefusalAsync(port, "kitchennightlight_client", "kitchen", "Wr0ngGuess-7391", version));
            Assert.Equal(MqttClientConnectResultCode.BadUserNameOrPassword, await RefusalAsync(port, "kitchennightlight_client", "nobody", secret, version));
            // A NUL inside a UTF-8 string makes the CONNECT malformed (MQTT 1.5.4): never accepted; 3.1.1 is closed
            // without CONNACK, 5 is refused with CONNACK Malformed Packet first.
            var nul = await Record.ExceptionAsync(() => MqttProbe.ConnectAsAsync(port, "kitchennightlight_client", "kitchen\0", secret, version));
            Assert.True(nul is ConnectRefusedException { ResultCode: MqttClientConnectResultCode.BadUserNameOrPassword or MqttClientConnectResultCode.MalformedPacket }
                or MQTTnet.Adapter.MqttConnectingFailedException,
                $"a user name with NUL: {nul?.GetType().Name ?? "accepted"}");
            // The right secret with another device's client id would let it kick that device off: refused.
            Assert.Equal(MqttClientConnectResultCode.ClientIdentifierNotValid, await RefusalAsync(port, "hallnightlight_client", "kitchen", secret, version));
            Assert.Equal(MqttClientConnectResultCode.ClientIdentifierNotValid, await RefusalAsync(port, "kitchenette", "kitchen", secret, version));
            // "kitchen-2" is the id of a device "kitchen-2" (ids may hold '-'), so it cannot be one of kitchen's own forms.
            Assert.Equal(MqttClientConnectResultCode.ClientIdentifierNotValid, await RefusalAsync(port, "kitchen-sensor-2", "kitchen", secret, version));

            foreach (var clientId in new[] { "kitchen", "kitchennightlight_client", "kitchen#sensor-2" })
            {
                await using var ok = await MqttProbe.ConnectAsAsync(port, clientId, "kitchen", secret, version);
                Assert.True(ok.Client.IsConnected);
            }
            await broker.WaitForErrorLineAsync("Refused connection of client hallnightlight_client (user kitchen)");
            Assert.DoesNotContain(secret, broker.Stdout + broker.Stderr);
            Assert.DoesNotContain("Wr0ngGuess-7391", broker.Stdout + broker.Stderr);
        }
    }

    [Theory]
    [InlineData(MqttProtocolVersion.V311)]
    [InlineData(MqttProtocolVersion.V500)]
    public async Task A_device_reaches_only_its_own_topics_and_the_server_identity_reaches_all(MqttProtocolVersion version)
    {
        using var data = new DataDir();
        var kitchenSecret = data.Add("kitchen");
        var hallSecret = data.Add("hall");
        var serverSecret = data.Add("backend", "add-server");
        var (broker, port, _) = await StartBrokerAsync(data);
        await using (broker)
        {
            await using var server = await MqttProbe.ConnectAsAsync(port, "backend#1", "backend", serverSecret, version);
            await server.SubscribeAsync("+/telemetry");
            await using var kitchen = await MqttProbe.ConnectAsAsync(port, "kitchennightlight_client", "kitchen", kitchenSecret, version);
            await using var hall = await MqttProbe.ConnectAsAsync(port, "hallnightlight_client", "hall", hallSecret, version);
            var v5 = version == MqttProtocolVersion.V500;

            // Subscriptions outside the device's own subtree get NotAuthorized (MQTT 5: 0x87; 3.1.1: failure 0x80).
            foreach (var filter in new[] { "hall/commands", "+/commands", "#", "+/telemetry", "hall/#" })
            {
                var result = await kitchen.Client.SubscribeAsync(new MqttClientSubscribeOptionsBuilder().WithTopicFilter(filter).Build());
                var code = result.Items.Single().ResultCode;
                Assert.True(code == (v5 ? MqttClientSubscribeResultCode.NotAuthorized : MqttClientSubscribeResultCode.UnspecifiedError), $"{filter}: {code}");
            }
            var own = await kitchen.Client.SubscribeAsync(new MqttClientSubscribeOptionsBuilder().WithTopicFilter("kitchen/commands").Build());
            Assert.Equal(MqttClientSubscribeResultCode.GrantedQoS0, own.Items.Single().ResultCode);
            await hall.SubscribeAsync("hall/commands");

            // A publish under another device's id: MQTT 5 answers NotAuthorized, 3.1.1 acknowledges and drops (as Mosquitto).
            var spoof = await kitchen.Client.PublishAsync(new MqttApplicationMessageBuilder().WithTopic("hall/telemetry").WithPayload("{\"light\": 1}")
                .WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build());
            Assert.Equal(v5 ? MqttClientPublishReasonCode.NotAuthorized : MqttClientPublishReasonCode.Success, spoof.ReasonCode);
            var spoofCommand = await kitchen.Client.PublishAsync(new MqttApplicationMessageBuilder().WithTopic("hall/commands").WithPayload("{\"led_on\": true}")
                .WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build());
            Assert.Equal(v5 ? MqttClientPublishReasonCode.NotAuthorized : MqttClientPublishReasonCode.Success, spoofCommand.ReasonCode);

            await kitchen.PublishAsync("kitchen/telemetry", "{\"light\": 42}", MqttQualityOfServiceLevel.AtLeastOnce);
            await server.WaitForAsync(m => m.Topic == "kitchen/telemetry" && m.Payload == "{\"light\": 42}");
            await server.PublishAsync("kitchen/commands", "{\"led_on\": true}", MqttQualityOfServiceLevel.AtLeastOnce);
            await kitchen.WaitForAsync(m => m.Topic == "kitchen/commands");

            // The server's command to hall went through, the spoofed one did not.
            await server.PublishAsync("hall/commands", "{\"led_on\": false}", MqttQualityOfServiceLevel.AtLeastOnce);
            await hall.WaitForAsync(m => m.Topic == "hall/commands");
            Assert.DoesNotContain(hall.Received, m => m.Payload.Contains("true", StringComparison.Ordinal));
            Assert.DoesNotContain(server.Received, m => m.Topic == "hall/telemetry");

            await broker.WaitForErrorLineAsync("Refused publish of client kitchennightlight_client to hall/telemetry: not a topic of 'kitchen'");
            await broker.WaitForErrorLineAsync("Refused subscription of client kitchennightlight_client to hall/commands");
        }
    }

    [Fact]
    public async Task The_lesson_runs_with_identities_and_no_secret_reaches_any_log()
    {
        using var data = new DataDir();
        var deviceSecret = data.Add("porch");
        var serverSecret = data.Add("lessonserver", "add-server");
        var (broker, port, _) = await StartBrokerAsync(data);
        await using (broker)
        {
            var url = $"mqtt://127.0.0.1:{port}";
            await using var server = NightlightCli.Start("server", "--broker", url, "--username", "lessonserver", "--password", serverSecret);
            await server.WaitForErrorLineAsync("Server listening");
            await using var device = NightlightCli.Start("device", "--broker", url, "--id", "porch", "--light", "100", "--interval", "200ms",
                "--username", "porch", "--password", deviceSecret);
            await device.WaitForLineAsync("LED switched ON");
            await server.WaitForLineAsync("Message received: {\"light\": 100}");

            // A device without credentials gets nowhere, and says so.
            await using var stranger = NightlightCli.Start("device", "--broker", url, "--id", "porch", "--light", "900", "--interval", "200ms");
            await broker.WaitForErrorLineAsync("no credentials, and this broker requires them");
            await device.TypeAsync("800");
            await device.WaitForLineAsync("LED switched OFF");

            foreach (var process in new[] { broker, server, device, stranger })
            {
                var all = process.Stdout + process.Stderr;
                Assert.DoesNotContain(deviceSecret, all);
                Assert.DoesNotContain(serverSecret, all);
            }
        }
    }

    [Fact]
    public async Task Rotating_or_removing_an_identity_takes_effect_on_a_running_broker()
    {
        using var data = new DataDir();
        var old = data.Add("lamp");
        var (broker, port, _) = await StartBrokerAsync(data);
        await using (broker)
        {
            await using var beforeRotation = await MqttProbe.ConnectAsAsync(port, "lamp#1", "lamp", old);
            var fresh = data.Rotate("lamp");
            // The broker's line comes first: a probe with the old secret sent before the broker has read the change
            // would connect and be closed with it ("closed its 2 connections").
            await broker.WaitForErrorLineAsync("Identity lamp was changed (rotated or revoked): closed its 1 connections");
            // A connection made with the old secret is closed at once, not left running until it reconnects.
            await Eventually(() => Task.FromResult(!beforeRotation.Client.IsConnected));
            Assert.Equal(MqttClientConnectResultCode.BadUserNameOrPassword, await RefusalAsync(port, "lamp#2", "lamp", old, MqttProtocolVersion.V500));

            await using var beforeRemoval = await MqttProbe.ConnectAsAsync(port, "lamp#3", "lamp", fresh);
            Assert.Equal(0, data.Devices("remove", "lamp").ExitCode);
            await broker.WaitForErrorLineAsync("Identity lamp was removed: closed its 1 connections");
            await Eventually(() => Task.FromResult(!beforeRemoval.Client.IsConnected));
            Assert.Equal(MqttClientConnectResultCode.BadUserNameOrPassword, await RefusalAsync(port, "lamp#4", "lamp", fresh, MqttProtocolVersion.V500));
        }
    }

    [Theory]
    [InlineData(MqttProtocolVersion.V311)]
    [InlineData(MqttProtocolVersion.V500)]
    public async Task A_device_cannot_take_the_session_of_a_device_whose_id_extends_its_own_nor_the_servers(MqttProtocolVersion version)
    {
        // Issue 32: device devA used devA-2nightlight_client (devA-2's default client id), took over devA-2's session
        // and read its commands; with the server's client id it inherited the server's subscription to every reading.
        using var data = new DataDir();
        var attacker = data.Add("devA");
        var victim = data.Add("devA-2");
        var serverSecret = data.Add("backend", "add-server");
        var (broker, port, _) = await StartBrokerAsync(data);
        await using (broker)
        {
            await using (var server = await MqttProbe.ConnectAsync(port, version, "nightlight_server-all-host", configure: b => b
                .WithCredentials("backend", serverSecret).WithCleanSession(false).WithSessionExpiryInterval(3600)))
            {
                await server.SubscribeAsync("+/telemetry", MqttQualityOfServiceLevel.AtLeastOnce);
            }
            await using (var owner = await MqttProbe.ConnectAsync(port, version, "devA-2nightlight_client", configure: b => b
                .WithCredentials("devA-2", victim).WithCleanSession(false).WithSessionExpiryInterval(3600)))
            {
                await owner.SubscribeAsync("devA-2/commands", MqttQualityOfServiceLevel.AtLeastOnce);
            }
            await using (var backend = await MqttProbe.ConnectAsAsync(port, "backend#commands", "backend", serverSecret, version))
            {
                await backend.PublishAsync("devA-2/commands", "{\"led_on\": true}", MqttQualityOfServiceLevel.AtLeastOnce);
            }

            foreach (var stolen in new[] { "devA-2nightlight_client", "devA-2", "devA-2#x", "nightlight_server-all-host", "devAnightlight_server" })
            {
                Assert.Equal(MqttClientConnectResultCode.ClientIdentifierNotValid, await RefusalAsync(port, stolen, "devA", attacker, version));
            }
            await broker.WaitForErrorLineAsync("Refused connection of client devA-2nightlight_client (user devA)");

            // The victim's session is untouched: its command waited for it.
            await using var back = await MqttProbe.ConnectAsync(port, version, "devA-2nightlight_client", configure: b => b
                .WithCredentials("devA-2", victim).WithCleanSession(false).WithSessionExpiryInterval(3600));
            await back.WaitForAsync(m => m.Topic == "devA-2/commands" && m.Payload == "{\"led_on\": true}");
        }
    }

    static async Task Eventually(Func<Task<bool>> condition)
    {
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (!await condition())
        {
            Assert.True(DateTime.UtcNow < deadline, "condition not met within 20 s");
            await Task.Delay(200);
        }
    }

    [Fact]
    public async Task Loopback_is_anonymous_by_default_and_not_when_told_or_once_identities_exist()
    {
        using var data = new DataDir();
        var (open, openPort, _) = await StartBrokerAsync(data);
        await using (open)
        {
            await using (await MqttProbe.ConnectAsync(openPort))
            {
            }
            // The first identity turns authentication on, without a restart.
            data.Add("first");
            await Eventually(async () => await RefusalAsync(openPort, "anyone", null, null, MqttProtocolVersion.V500) == MqttClientConnectResultCode.NotAuthorized);
        }

        using var empty = new DataDir();
        var (strict, strictPort, _) = await StartBrokerAsync(empty, "--allow-anonymous", "false");
        await using (strict)
        {
            Assert.Equal(MqttClientConnectResultCode.NotAuthorized, await RefusalAsync(strictPort, "anyone", null, null, MqttProtocolVersion.V311));
        }
    }

    [Fact]
    public async Task Up_with_identities_still_runs_the_lesson_in_one_process()
    {
        using var data = new DataDir();
        data.Add("someone");
        var mqtt = Ports.Free();
        await using var up = NightlightCli.Start("up", "--mqtt-port", mqtt.ToString(), "--http-port", Ports.Free().ToString(), "--data", data.Path,
            "--light", "100", "--interval", "200ms");
        await up.WaitForLineAsync("LED switched ON");
        Assert.Equal(MqttClientConnectResultCode.NotAuthorized, await RefusalAsync(mqtt, "x", null, null, MqttProtocolVersion.V500));
        Assert.Equal(MqttClientConnectResultCode.BadUserNameOrPassword, await RefusalAsync(mqtt, "x", "$nightlight-in-process", "guess", MqttProtocolVersion.V500));
    }

    [Fact]
    public async Task Tls_listener_works_with_mosquitto_clients_and_mqttnet_trusting_the_development_certificate()
    {
        using var data = new DataDir();
        var secret = data.Add("secure");
        var tlsPort = Ports.Free();
        var (broker, port, _) = await StartBrokerAsync(data, "--tls-port", tlsPort.ToString());
        await using (broker)
        {
            var pem = Path.Combine(data.Path, "dev-broker.pem");
            await broker.WaitForLineAsync($"clients must trust {pem}");
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(Path.Combine(data.Path, "dev-broker.pfx")));

            var sub = ProcessRunner.Start(External.Require("stdbuf", "coreutils"), ["-oL", External.Require("mosquitto_sub", "mosquitto-clients"),
                "-h", "localhost", "-p", tlsPort.ToString(), "--cafile", pem, "-u", "secure", "-P", secret, "-i", "secure#sub", "-t", "secure/#", "-v", "-d"]);
            await using (sub)
            {
                await sub.WaitForLineAsync("received SUBACK");
                var (code, stdout, stderr) = await Task.Run(() => ProcessRunner.Run(External.Require("mosquitto_pub", "mosquitto-clients"),
                    ["-h", "localhost", "-p", tlsPort.ToString(), "--cafile", pem, "-u", "secure", "-P", secret, "-i", "secure#pub",
                     "-t", "secure/telemetry", "-m", "{\"light\": 7}"], TimeSpan.FromSeconds(20)));
                Assert.True(code == 0, $"mosquitto_pub over TLS failed ({code}): {stdout} {stderr}");
                await sub.WaitForLineAsync("secure/telemetry {\"light\": 7}");
            }

            // MQTTnet, both protocol versions, trusting only that certificate.
            using var trusted = X509Certificate2.CreateFromPem(File.ReadAllText(pem));
            foreach (var version in new[] { MqttProtocolVersion.V311, MqttProtocolVersion.V500 })
            {
                await using var probe = await MqttProbe.ConnectAsync(tlsPort, version, "secure#" + version, "localhost", b => b
                    .WithCredentials("secure", secret)
                    .WithTlsOptions(t => t.UseTls().WithCertificateValidationHandler(args =>
                    {
                        using var chain = new X509Chain();
                        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
                        chain.ChainPolicy.CustomTrustStore.Add(trusted);
                        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
                        return chain.Build(new X509Certificate2(args.Certificate)) && args.SslPolicyErrors is System.Net.Security.SslPolicyErrors.None
                            or System.Net.Security.SslPolicyErrors.RemoteCertificateChainErrors;
                    })));
                await probe.SubscribeAsync("secure/commands");
                await probe.PublishAsync("secure/telemetry", "{\"light\": 8}", MqttQualityOfServiceLevel.AtLeastOnce);
            }

            // An untrusting client is turned away, and plain MQTT on the TLS port goes nowhere.
            await Assert.ThrowsAnyAsync<Exception>(() => MqttProbe.ConnectAsync(tlsPort, MqttProtocolVersion.V500, "secure#x", "localhost",
                b => b.WithCredentials("secure", secret).WithTlsOptions(t => t.UseTls())));
            await Assert.ThrowsAnyAsync<Exception>(() => MqttProbe.ConnectAsAsync(tlsPort, "secure#y", "secure", secret));
            Assert.False(broker.HasExited);
            Assert.DoesNotContain(secret, broker.Stdout + broker.Stderr);
        }
    }
}
