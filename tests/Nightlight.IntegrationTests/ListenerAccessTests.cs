using MQTTnet;
using MQTTnet.Formatter;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>
/// Anonymous access is decided per listener (issue 29): a listener bound beyond loopback refuses clients without
/// credentials even while the others, on loopback, take them. Listeners are bound to 0.0.0.0 (a public bind) and
/// reached only through 127.0.0.1.
/// </summary>
[System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
public class ListenerAccessTests
{
    // paho-mqtt 1.6 over WebSocket, no credentials: prints the CONNACK code (0 accepted, 5 not authorised).
    const string PahoWebSocketAttacker = """
        import sys, time, paho.mqtt.client as mqtt
        codes = []
        c = mqtt.Client("attacker", transport="websockets")
        c.ws_set_options(path="/mqtt")
        c.on_connect = lambda client, userdata, flags, rc: codes.append(rc)
        c.connect("127.0.0.1", int(sys.argv[1]))
        c.loop_start()
        deadline = time.time() + 15
        while not codes and time.time() < deadline:
            time.sleep(0.05)
        c.loop_stop()
        print("connack", codes[0] if codes else "none", flush=True)
        """;

    [Fact]
    public async Task Mqtt_over_websocket_on_a_public_http_port_refuses_anonymous_clients()
    {
        var python = External.RequirePahoPython();
        using var data = new DataDir();
        var (broker, mqtt, http) = await NightlightCli.StartBrokerWithAsync(new Dictionary<string, string> { ["NIGHTLIGHT_Http__Bind"] = "0.0.0.0" },
            "--data", data.Path);
        await using (broker)
        {
            await broker.WaitForErrorLineAsync($"Anonymous clients allowed on mqtt://localhost:{mqtt}; credentials required on ws://0.0.0.0:{http}/mqtt");
            var (code, stdout, stderr) = await Task.Run(() => ProcessRunner.Run(python, ["-c", PahoWebSocketAttacker, http.ToString()], TimeSpan.FromSeconds(30)));
            Assert.True(stdout.Contains("connack 5"), $"anonymous paho over ws://127.0.0.1:{http}/mqtt got: {stdout} {stderr} (exit {code})");

            // MQTTnet's WebSocket channel is refused the same way; plain MQTT, bound to loopback, still takes anonymous clients.
            using var mqttnet = new MqttClientFactory().CreateMqttClient();
            var result = await mqttnet.ConnectAsync(new MqttClientOptionsBuilder().WithWebSocketServer(o => o.WithUri($"ws://127.0.0.1:{http}/mqtt"))
                .WithProtocolVersion(MqttProtocolVersion.V500).WithClientId("attacker-5").WithTimeout(TimeSpan.FromSeconds(10)).Build());
            Assert.Equal(MqttClientConnectResultCode.NotAuthorized, result.ResultCode);
            await using (await MqttProbe.ConnectAsync(mqtt))
            {
            }
        }
    }

    [Fact]
    public async Task Tls_only_deployment_refuses_anonymous_clients_on_the_public_tls_port()
    {
        var sub = External.Require("mosquitto_sub", "mosquitto-clients");
        var pub = External.Require("mosquitto_pub", "mosquitto-clients");
        using var data = new DataDir();
        var tls = Ports.Free();
        var (broker, mqtt, http) = await NightlightCli.StartBrokerWithAsync(new Dictionary<string, string> { ["NIGHTLIGHT_Broker__TlsBind"] = "0.0.0.0" },
            "--data", data.Path, "--tls-port", tls.ToString());
        await using (broker)
        {
            await broker.WaitForErrorLineAsync($"credentials required on mqtts://0.0.0.0:{tls}");
            var pem = Path.Combine(data.Path, "dev-broker.pem");
            var (code, stdout, stderr) = await Task.Run(() => ProcessRunner.Run(sub, ["-h", "127.0.0.1", "-p", tls.ToString(), "--cafile", pem,
                "-t", "#", "-C", "1", "-W", "5"], TimeSpan.FromSeconds(30)));
            Assert.True(code != 0 && (stdout + stderr).Contains("not authori", StringComparison.OrdinalIgnoreCase),
                $"anonymous mosquitto_sub on mqtts://127.0.0.1:{tls} ({code}): {stdout} {stderr}");

            // The plain port, on loopback, is the lesson's anonymous broker as before.
            (code, stdout, stderr) = await Task.Run(() => ProcessRunner.Run(pub, ["-h", "127.0.0.1", "-p", mqtt.ToString(), "-t", "x/telemetry", "-m", "{\"light\": 1}"],
                TimeSpan.FromSeconds(30)));
            Assert.True(code == 0, $"anonymous mosquitto_pub on loopback ({code}): {stdout} {stderr}");
        }
    }
}

/// <summary>A server with its own data directory, logging in to a broker that requires identities (issue 29).</summary>
[System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
public class SeparateServerAccessTests
{
    [Trait("Speed", "Slow")]
    [Fact]
    public async Task A_server_that_logs_in_to_its_broker_refuses_anonymous_http_devices_and_reads_its_secret_from_a_file()
    {
        using var brokerData = new DataDir();
        var secret = brokerData.Add("backend", "add-server");
        using var serverData = new DataDir();
        var (broker, mqtt, _) = await NightlightCli.StartBrokerAsync("--data", brokerData.Path);
        await using (broker)
        {
            var file = Path.Combine(serverData.Path, "backend.secret");
            File.WriteAllText(file, secret + "\n");
            var http = Ports.Free();
            var server = NightlightCli.Start("server", "--broker", $"mqtt://127.0.0.1:{mqtt}", "--username", "backend", "--password-file", file,
                "--http-port", http.ToString(), "--data", Path.Combine(serverData.Path, "own"));
            await using (server)
            {
                await server.WaitForErrorLineAsync("Server listening", TimeSpan.FromSeconds(60));
                using var client = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{http}/") };
                using var response = await client.PostAsync("api/devices/kitchen/telemetry",
                    new StringContent("{\"light\": 5}", System.Text.Encoding.UTF8, "application/json"));
                Assert.Equal(System.Net.HttpStatusCode.Unauthorized, response.StatusCode);
                Assert.DoesNotContain("warning: --password", server.Stderr);
                Assert.DoesNotContain(secret, server.Stdout + server.Stderr);
            }
        }
    }
}
