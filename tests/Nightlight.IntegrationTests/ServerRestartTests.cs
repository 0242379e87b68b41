using System.Text.Json;
using MQTTnet.Protocol;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>
/// <c>nightlight server</c> killed with -9 while a device keeps publishing at QoS 1, and started again: the broker kept
/// its session (a stable client id, clean session off, QoS 1, acknowledged once stored), so every reading is stored
/// once. Regression: the server's random client id and clean QoS 0 session lost everything sent while it was down.
/// </summary>
[Trait("Speed", "Slow")]
public class ServerRestartTests
{
    static readonly TimeSpan Wait = TimeSpan.FromSeconds(60);

    [Theory]
    [InlineData("mosquitto")]
    [InlineData("nightlight")]
    public async Task Every_reading_is_stored_once_across_a_kill_9_of_the_server(string brokerKind)
    {
        MosquittoBroker? mosquitto = null;
        ProcessRunner? ourBroker = null;
        int port;
        if (brokerKind == "mosquitto")
        {
            mosquitto = await MosquittoBroker.StartAsync();
            port = mosquitto.Port;
        }
        else
        {
            (ourBroker, port, _) = await NightlightCli.StartBrokerAsync();
        }
        await using var _mosquitto = mosquitto;
        await using var _ourBroker = ourBroker;
        using var data = new TempDirectory("restart");
        var http = Ports.Free();
        string[] args = ["server", "--broker", $"mqtt://127.0.0.1:{port}", "--http-port", http.ToString(), "--data", data.Path, "--quiet"];

        var first = NightlightCli.Start(args);
        await first.StopIfNotReadyAsync(p => p.WaitForErrorLineAsync("Server listening", Wait));
        await using var device = await MqttProbe.ConnectAsync(port);
        const int Total = 1500;
        var published = 0;
        var sending = Task.Run(async () =>
        {
            for (var seq = 1; seq <= Total; seq++)
            {
                await device.PublishAsync("k1/telemetry", $"{{\"light\": 500, \"seq\": {seq}}}", MqttQualityOfServiceLevel.AtLeastOnce);
                Volatile.Write(ref published, seq);
                await Task.Delay(2);
            }
        });
        while (Volatile.Read(ref published) < 300)
        {
            await Task.Delay(20);
        }
        first.Signal("KILL");
        await first.WaitForExitAsync(Wait);
        await first.DisposeAsync();
        var atKill = Volatile.Read(ref published);
        await Task.Delay(TimeSpan.FromSeconds(3));
        Assert.True(Volatile.Read(ref published) > atKill, "the device published nothing while the server was down");

        await using var second = NightlightCli.Start(args);
        await second.StopIfNotReadyAsync(p => p.WaitForErrorLineAsync("Server listening", Wait));
        await sending;

        using var client = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{http}") };
        var deadline = DateTime.UtcNow + Wait;
        List<long> seqs;
        do
        {
            await Task.Delay(300);
            var readings = JsonDocument.Parse(await client.GetStringAsync("/api/devices/k1/readings?limit=10000")).RootElement;
            seqs = [.. readings.EnumerateArray().Select(r => r.GetProperty("seq").GetInt64())];
        }
        while (seqs.Count < Total && DateTime.UtcNow < deadline);
        Assert.Equal(Enumerable.Range(1, Total).Select(i => (long)i), seqs.Order());
    }
}
