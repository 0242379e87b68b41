using System.Net;
using System.Text.Json;
using MQTTnet.Protocol;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>
/// The store fails under a running server (PostgreSQL stopped, SQLite's disk full, a garbled file): readings wait and
/// are written once it is back, and /readyz and /metrics say so meanwhile. Real processes, a real broker, a real store.
/// </summary>
[Trait("Speed", "Slow")]
public class StoreOutageTests
{
    static readonly TimeSpan Wait = TimeSpan.FromSeconds(60);

    sealed class Setup : IAsyncDisposable
    {
        public required MosquittoBroker Broker { get; init; }
        public required ProcessRunner Server { get; init; }
        public required HttpClient Http { get; init; }
        public required MqttProbe Device { get; init; }

        public async ValueTask DisposeAsync()
        {
            Http.Dispose();
            await Device.DisposeAsync();
            await Server.DisposeAsync();
            await Broker.DisposeAsync();
        }
    }

    static async Task<Setup> StartAsync(IDictionary<string, string> environment, params string[] extra)
    {
        var broker = await MosquittoBroker.StartAsync();
        var http = Ports.Free();
        var server = NightlightCli.StartWith(environment, ["server", "--broker", broker.Url, "--http-port", http.ToString(), .. extra]);
        await server.StopIfNotReadyAsync(p => p.WaitForErrorLineAsync("Server listening", Wait), broker);
        var device = await MqttProbe.ConnectAsync(broker.Port);
        return new Setup { Broker = broker, Server = server, Device = device, Http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{http}") } };
    }

    static async Task SendAsync(MqttProbe device, string id, int first, int last)
    {
        for (var seq = first; seq <= last; seq++)
        {
            await device.PublishAsync($"{id}/telemetry", $"{{\"light\": 500, \"seq\": {seq}}}", MqttQualityOfServiceLevel.AtLeastOnce);
        }
    }

    /// <summary>The seqs of a device's stored readings, as the history API lists them.</summary>
    static async Task<List<long>> StoredSeqsAsync(HttpClient http, string id)
    {
        var response = await http.GetAsync($"/api/devices/{id}/readings?limit=10000");
        if (!response.IsSuccessStatusCode)
        {
            return [];
        }
        var readings = JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement;
        return [.. readings.EnumerateArray().Select(r => r.GetProperty("seq").GetInt64())];
    }

    /// <summary>Waits until the device's stored seqs are exactly 1..<paramref name="last"/>, each once.</summary>
    static async Task AssertStoredOnceAsync(HttpClient http, string id, int last)
    {
        var deadline = DateTime.UtcNow + Wait;
        List<long> seqs;
        while ((seqs = await StoredSeqsAsync(http, id)).Count < last && DateTime.UtcNow < deadline)
        {
            await Task.Delay(200);
        }
        Assert.Equal(Enumerable.Range(1, last).Select(i => (long)i), seqs.Order());
    }

    static async Task<(HttpStatusCode Status, string Body)> ReadyAsync(HttpClient http)
    {
        var response = await http.GetAsync("/readyz");
        return (response.StatusCode, await response.Content.ReadAsStringAsync());
    }

    static async Task WaitUntilReadyIsAsync(HttpClient http, HttpStatusCode status, string body)
    {
        var deadline = DateTime.UtcNow + Wait;
        var last = await ReadyAsync(http);
        while ((last.Status != status || last.Body != body) && DateTime.UtcNow < deadline)
        {
            await Task.Delay(200);
            last = await ReadyAsync(http);
        }
        Assert.Equal((status, body), last);
    }

    static async Task<double> MetricAsync(HttpClient http, string name)
    {
        var line = (await http.GetStringAsync("/metrics")).Split('\n').FirstOrDefault(l => l.StartsWith(name, StringComparison.Ordinal) && !l.StartsWith('#'));
        return line is null ? 0 : double.Parse(line[(line.LastIndexOf(' ') + 1)..], System.Globalization.CultureInfo.InvariantCulture);
    }

    [Fact]
    public async Task A_stopped_PostgreSQL_holds_the_readings_and_stores_each_once_when_it_is_back()
    {
        await using var postgres = await PostgresServer.StartAsync();
        var database = await postgres.CreateDatabaseAsync();
        await using var s = await StartAsync(new Dictionary<string, string>
        {
            ["NIGHTLIGHT_Storage__Provider"] = "postgresql",
            ["NIGHTLIGHT_Storage__ConnectionString"] = database,
        });
        await SendAsync(s.Device, "pg1", 1, 50);
        await AssertStoredOnceAsync(s.Http, "pg1", 50);

        postgres.Stop();
        await SendAsync(s.Device, "pg1", 51, 300);
        await WaitUntilReadyIsAsync(s.Http, HttpStatusCode.ServiceUnavailable, "Unhealthy");
        Assert.True(await MetricAsync(s.Http, "nightlight_store_write_failures") > 0, "no failed write counted in /metrics");
        Assert.Equal(1, await MetricAsync(s.Http, "nightlight_store_failing"));

        postgres.Restart();
        await AssertStoredOnceAsync(s.Http, "pg1", 300);
        await WaitUntilReadyIsAsync(s.Http, HttpStatusCode.OK, "Healthy");
    }

    [Fact]
    public async Task SQLite_on_a_full_disk_holds_the_readings_and_stores_them_once_space_is_freed()
    {
        using var disk = new SmallDisk(kibibytes: 4096);
        await using var s = await StartAsync(new Dictionary<string, string>(), "--data", disk.Path);
        await SendAsync(s.Device, "full1", 1, 50);
        await AssertStoredOnceAsync(s.Http, "full1", 50);

        disk.Fill();
        // Enough readings to need pages the WAL does not have yet.
        await SendAsync(s.Device, "full1", 51, 3000);
        await WaitUntilReadyIsAsync(s.Http, HttpStatusCode.ServiceUnavailable, "Unhealthy");
        Assert.True(await MetricAsync(s.Http, "nightlight_store_write_failures") > 0, "no failed write counted in /metrics");

        disk.Free();
        await AssertStoredOnceAsync(s.Http, "full1", 3000);
        await WaitUntilReadyIsAsync(s.Http, HttpStatusCode.OK, "Healthy");
    }

    [Fact]
    public async Task A_database_file_that_cannot_be_opened_stops_the_server_with_one_line_naming_it()
    {
        using var data = new TempDirectory("garbled");
        var file = Path.Combine(data.Path, "nightlight.db");
        var garbage = new byte[16384];
        new Random(28).NextBytes(garbage);
        await File.WriteAllBytesAsync(file, garbage);

        await using var server = NightlightCli.Start("server", "--broker", $"mqtt://127.0.0.1:{Ports.Free()}", "--data", data.Path);
        Assert.True(await server.WaitForExitAsync(Wait), "the server kept running on a garbled database:\n" + server.Describe());
        Assert.Equal(1, server.ExitCode);
        var errors = server.StderrLines.Where(l => l.StartsWith("error:", StringComparison.Ordinal)).ToList();
        var line = Assert.Single(errors);
        Assert.Contains(file, line, StringComparison.Ordinal);
        Assert.Contains("Move the file aside", line, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", server.Stderr + server.Stdout, StringComparison.Ordinal);
    }
}
