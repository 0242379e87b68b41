using System.Globalization;
using System.Net.Http.Json;
using System.Text.Json;
using System.Text.RegularExpressions;
using MQTTnet.Protocol;
using Nightlight.Device;
using Nightlight.Mqtt;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>
/// A device whose numbering starts again at 1 begins a new epoch, and the server stores its readings: regressions of
/// "6,000 of 6,000 readings thrown away as duplicates" when <c>nightlight fleet</c> ran a second time.
/// </summary>
public partial class EpochTests
{
    static readonly TimeSpan Wait = TimeSpan.FromSeconds(60);

    static async Task<(ProcessRunner Up, int MqttPort, HttpClient Http)> StartUpAsync()
    {
        var mqtt = Ports.Free();
        var http = Ports.Free();
        var up = NightlightCli.Start("up", "--mqtt-port", mqtt.ToString(CultureInfo.InvariantCulture), "--http-port", http.ToString(CultureInfo.InvariantCulture),
            "--no-status");
        await up.WaitForErrorLineAsync("Server listening", Wait);
        return (up, mqtt, new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{http}"), Timeout = Wait });
    }

    /// <summary>The stored readings of a device as the history API gives them (none while the server has not seen it).</summary>
    static async Task<List<JsonElement>> StoredAsync(HttpClient http, string id)
    {
        var response = await http.GetAsync($"/api/devices/{id}/readings?limit=100000");
        return response.IsSuccessStatusCode ? [.. (await response.Content.ReadFromJsonAsync<JsonElement>()).EnumerateArray()] : [];
    }

    /// <summary>Polls until the devices together have <paramref name="expected"/> stored readings; returns the last count.</summary>
    static async Task<int> WaitForStoredAsync(HttpClient http, IEnumerable<string> ids, int expected)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
        var count = 0;
        while (DateTime.UtcNow < deadline)
        {
            count = 0;
            foreach (var id in ids)
            {
                count += (await StoredAsync(http, id)).Count;
            }
            if (count >= expected)
            {
                return count;
            }
            await Task.Delay(250);
        }
        return count;
    }

    [Trait("Speed", "Slow")]
    [Fact]
    public async Task A_fleet_run_twice_against_one_up_has_every_reading_of_both_runs_stored()
    {
        var (up, mqtt, http) = await StartUpAsync();
        await using (up)
        using (http)
        {
            long sent = 0;
            for (var run = 0; run < 2; run++)
            {
                await using var fleet = NightlightCli.Start("fleet", "--broker", $"mqtt://127.0.0.1:{mqtt}", "--devices", "3", "--id-prefix", "again",
                    "--interval", "200ms", "--duration", "3s");
                Assert.True(await fleet.WaitForExitAsync(Wait), fleet.Describe());
                var done = Done().Match(fleet.Stdout);
                Assert.True(done.Success, fleet.Describe());
                sent += long.Parse(done.Groups[1].Value, CultureInfo.InvariantCulture);
            }

            string[] ids = ["again00001", "again00002", "again00003"];
            var stored = await WaitForStoredAsync(http, ids, (int)sent);
            Assert.Equal(sent, stored);
            // Each run numbered from 1 in an epoch of its own.
            var epochs = (await StoredAsync(http, ids[0])).Select(r => r.GetProperty("epoch").GetInt64()).Distinct().ToList();
            Assert.Equal(2, epochs.Count);
        }
    }

    [Fact]
    public async Task A_device_with_a_garbled_telemetry_seq_starts_a_new_epoch_and_its_new_readings_are_stored()
    {
        var (up, mqtt, http) = await StartUpAsync();
        await using (up)
        using (http)
        using (var data = new TempDirectory("garbled"))
        {
            async Task<long> SendFiveAsync()
            {
                await using var client = new DeviceClient(new DeviceClientOptions
                {
                    Id = "garble1",
                    DataDirectory = data.Path,
                    TelemetryQos = MqttQualityOfServiceLevel.AtLeastOnce,
                    Connection = MqttConnectionOptions.From($"mqtt://127.0.0.1:{mqtt}", "garble1nightlight_client", "auto"),
                }, (_, _) => ValueTask.CompletedTask);
                client.Start();
                await client.WaitConnectedAsync(new CancellationTokenSource(Wait).Token);
                for (var i = 0; i < 5; i++)
                {
                    Assert.NotNull(await client.SendAsync("light", 100 + i, CancellationToken.None));
                }
                return client.Epoch;
            }

            var first = await SendFiveAsync();
            Assert.Equal(5, await WaitForStoredAsync(http, ["garble1"], 5));
            await File.WriteAllTextAsync(Path.Combine(data.Path, "telemetry.seq"), "\0\0garbled");
            var second = await SendFiveAsync();

            Assert.NotEqual(first, second);
            Assert.Equal(10, await WaitForStoredAsync(http, ["garble1"], 10));
            var readings = await StoredAsync(http, "garble1");
            Assert.Equal(new[] { first, second }.SelectMany(epoch => Enumerable.Range(1, 5).Select(seq => (epoch, (long)seq))).Order(),
                readings.Select(r => (r.GetProperty("epoch").GetInt64(), r.GetProperty("seq").GetInt64())).Order());
        }
    }

    [Trait("Speed", "Slow")]
    [Fact]
    public async Task A_device_shows_the_readings_it_lost_on_the_way_as_missing_in_the_api_metrics_and_dashboard()
    {
        var (up, mqtt, http) = await StartUpAsync();
        await using (up)
        using (http)
        {
            await using var device = await MqttProbe.ConnectAsync(mqtt, clientId: "gappy1nightlight_client");
            // Seqs 3 and 4 never arrive; a copy of 2 is not a loss; a new epoch starting at 1 loses nothing.
            foreach (var payload in new[] { "{\"light\": 1, \"seq\": 1}", "{\"light\": 1, \"seq\": 2}", "{\"light\": 1, \"seq\": 2}",
                "{\"light\": 1, \"seq\": 5}", "{\"light\": 1, \"seq\": 1, \"epoch\": 77}", "{\"light\": 1, \"seq\": 2, \"epoch\": 77}" })
            {
                await device.PublishAsync("gappy1/telemetry", payload, MqttQualityOfServiceLevel.AtLeastOnce);
            }
            Assert.Equal(5, await WaitForStoredAsync(http, ["gappy1"], 5));

            var view = await http.GetFromJsonAsync<JsonElement>("/api/devices/gappy1");
            Assert.Equal(2, view.GetProperty("missing").GetInt64());

            var metric = (await http.GetStringAsync("/metrics")).Split('\n').FirstOrDefault(l => l.StartsWith("nightlight_readings_missing", StringComparison.Ordinal));
            Assert.True(metric is not null, "no nightlight_readings_missing in /metrics");
            Assert.EndsWith(" 2", metric);

            await using var browser = await Browser.LaunchAsync();
            var dashboard = await browser.OpenAsync(http.BaseAddress + "");
            var lost = dashboard.Locator("article.device[data-device='gappy1'] .lost");
            await Microsoft.Playwright.Assertions.Expect(lost).ToBeVisibleAsync(new() { Timeout = 20_000 });
            await Microsoft.Playwright.Assertions.Expect(lost.Locator(".missing")).ToHaveTextAsync("2", new() { Timeout = 20_000 });
        }
    }

    [GeneratedRegex(@"done: 3 devices, (\d+) readings sent")]
    private static partial Regex Done();
}
