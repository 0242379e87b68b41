using System.Net.Http.Json;
using System.Text.Json;
using MQTTnet.Protocol;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>Scale-out: two server processes share the telemetry through a Mosquitto shared subscription.</summary>
public class SharedSubscriptionTests
{
    [Fact]
    public async Task Two_servers_sharing_a_subscription_handle_each_reading_once_in_total()
    {
        await using var mosquitto = await MosquittoBroker.StartAsync();
        var ports = new[] { Ports.Free(), Ports.Free() };
        // Two members of one group on one machine: each needs its own client id (the default is per group and machine).
        await using var a = NightlightCli.StartWith(new Dictionary<string, string> { ["NIGHTLIGHT_Server__ClientId"] = "nightlight_server-a" }, "server", "--broker", mosquitto.Url, "--share", "nightlights", "--quiet", "--http-port", ports[0].ToString());
        await using var b = NightlightCli.StartWith(new Dictionary<string, string> { ["NIGHTLIGHT_Server__ClientId"] = "nightlight_server-b" }, "server", "--broker", mosquitto.Url, "--share", "nightlights", "--quiet", "--http-port", ports[1].ToString());
        await a.WaitForErrorLineAsync("Server listening for $share/nightlights/+/telemetry", TimeSpan.FromSeconds(30));
        await b.WaitForErrorLineAsync("Server listening for $share/nightlights/+/telemetry", TimeSpan.FromSeconds(30));

        await using var devices = await MosquittoProbe(mosquitto.Port);
        await devices.SubscribeAsync("+/commands", MqttQualityOfServiceLevel.AtLeastOnce);
        const int perDevice = 20, deviceCount = 10;
        for (var seq = 1; seq <= perDevice; seq++)
        {
            for (var d = 0; d < deviceCount; d++)
            {
                // Lesson payloads (no seq): these devices do not acknowledge, so no command is retried.
                await devices.PublishAsync($"share{d}/telemetry", $"{{\"light\": {(seq % 2 == 0 ? 100 : 900)}}}");
            }
        }

        // One command per reading in total: each reading went to exactly one server.
        await devices.WaitForAsync(m => m.Topic.EndsWith("/commands", StringComparison.Ordinal), perDevice * deviceCount);
        // The store writes in batches off the message path: poll until both servers' histories add up (or time out).
        var perServer = new List<int>();
        var deadline = DateTime.UtcNow.AddSeconds(20);
        do
        {
            perServer.Clear();
            foreach (var port in ports)
            {
                using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}") };
                var mine = 0;
                foreach (var device in (await http.GetFromJsonAsync<JsonElement>("/api/devices")).EnumerateArray())
                {
                    mine += (await http.GetFromJsonAsync<JsonElement>($"/api/devices/{device.GetProperty("id").GetString()}/readings")).GetArrayLength();
                }
                perServer.Add(mine);
            }
        }
        while (perServer.Sum() < perDevice * deviceCount && DateTime.UtcNow < deadline && await Task.Delay(200).ContinueWith(_ => true));
        var stored = perServer.Sum();
        Assert.Equal(perDevice * deviceCount, stored);
        Assert.All(perServer, n => Assert.True(n > 0, $"one server got no readings: {string.Join(", ", perServer)}"));
        await Task.Delay(500);
        Assert.Equal(perDevice * deviceCount, devices.Received.Count(m => m.Topic.EndsWith("/commands", StringComparison.Ordinal)));
    }

    static Task<MqttProbe> MosquittoProbe(int port) => MqttProbe.ConnectAsync(port, MQTTnet.Formatter.MqttProtocolVersion.V500);
}
