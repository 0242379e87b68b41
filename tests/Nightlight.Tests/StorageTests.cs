using Nightlight.Server.Storage;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>The same storage contract, run against a real SQLite file and a real PostgreSQL cluster.</summary>
public abstract class StorageContractTests
{
    protected abstract Task<ITelemetryStore> OpenStoreAsync();

    static readonly DateTimeOffset T0 = new(2026, 11, 1, 10, 0, 0, TimeSpan.Zero);

    static StoredReading Reading(string device, int second, double light, long? seq = null, double? temperature = null)
    {
        var measurements = new Dictionary<string, double> { ["light"] = light };
        if (temperature is { } t)
        {
            measurements["temperature"] = t;
        }
        return new StoredReading(device, T0.AddSeconds(second), T0.AddSeconds(second).AddMilliseconds(5), seq, measurements);
    }

    [Fact]
    public async Task A_reading_redelivered_with_the_same_seq_is_stored_once()
    {
        await using var store = await OpenStoreAsync();
        // QoS 1 redelivery: once inside the same batch, once in a later batch.
        var first = await store.WriteAsync([Reading("d1", 1, 100, seq: 7), Reading("d1", 1, 100, seq: 7), Reading("d1", 2, 110, seq: 8)], [], [], default);
        var second = await store.WriteAsync([Reading("d1", 1, 100, seq: 7), Reading("d2", 1, 100, seq: 7)], [], [], default);

        Assert.Equal(2, first);
        Assert.Equal(1, second);
        var readings = await store.ReadingsAsync("d1", T0, T0.AddMinutes(1), 100, default);
        Assert.Equal([7L, 8L], readings.Select(r => r.Seq!.Value));
    }

    [Fact]
    public async Task Readings_without_seq_are_all_kept_in_time_order_with_every_measurement()
    {
        await using var store = await OpenStoreAsync();
        await store.WriteAsync([Reading("d1", 3, 300), Reading("d1", 1, 100, temperature: 18.5), Reading("d1", 1, 100), Reading("other", 2, 5)], [], [], default);

        var readings = await store.ReadingsAsync("d1", T0, T0.AddMinutes(1), 100, default);

        Assert.Equal([100.0, 100.0, 300.0], readings.Select(r => r.Measurements["light"]));
        Assert.Equal(18.5, readings[0].Measurements["temperature"]);
        Assert.Equal(T0.AddSeconds(1).AddMilliseconds(5), readings[0].Arrived);
        Assert.Single(await store.ReadingsAsync("d1", T0.AddSeconds(2), T0.AddMinutes(1), 100, default));
        Assert.Equal(2, (await store.ReadingsAsync("d1", T0, T0.AddMinutes(1), 2, default)).Count);
    }

    [Fact]
    public async Task Buckets_give_min_avg_max_per_measurement_and_leave_empty_buckets_out()
    {
        await using var store = await OpenStoreAsync();
        await store.WriteAsync([Reading("d1", 0, 10, temperature: 20), Reading("d1", 5, 30, temperature: 22), Reading("d1", 9, 20, temperature: 21),
            Reading("d1", 31, 400)], [], [], default);

        var buckets = await store.BucketsAsync("d1", T0, T0.AddMinutes(1), TimeSpan.FromSeconds(10), ["light", "temperature"], default);

        Assert.Equal([T0, T0.AddSeconds(30)], buckets.Select(b => b.Start));
        Assert.Equal(3, buckets[0].Count);
        Assert.Equal(new BucketStats(10, 20, 30), buckets[0].Measurements["light"]);
        Assert.Equal(new BucketStats(20, 21, 22), buckets[0].Measurements["temperature"]);
        Assert.Equal(new BucketStats(400, 400, 400), buckets[1].Measurements["light"]);
        Assert.False(buckets[1].Measurements.ContainsKey("temperature"));
    }

    [Fact]
    public async Task Minute_buckets_from_the_rollup_agree_with_the_raw_readings_and_skip_redelivered_ones()
    {
        await using var store = await OpenStoreAsync();
        // Three minutes of readings; seq 2 arrives twice in a later batch and must not count twice.
        await store.WriteAsync([Reading("d1", 10, 100, seq: 1), Reading("d1", 70, 200, seq: 2), Reading("d1", 130, 600, seq: 3)], [], [], default);
        await store.WriteAsync([Reading("d1", 70, 200, seq: 2), Reading("d1", 100, 400, seq: 4)], [], [], default);

        // From 30 s in: the first minute is partial (raw readings), the next ones whole (rollup).
        var buckets = await store.BucketsAsync("d1", T0.AddSeconds(5), T0.AddMinutes(3), TimeSpan.FromMinutes(2), ["light"], default);

        Assert.Equal([T0, T0.AddMinutes(2)], buckets.Select(b => b.Start));
        Assert.Equal([3L, 1L], buckets.Select(b => b.Count));
        Assert.Equal(new BucketStats(100, 700.0 / 3, 400), buckets[0].Measurements["light"]);
        Assert.Equal(new BucketStats(600, 600, 600), buckets[1].Measurements["light"]);
    }

    [Fact]
    public async Task Commands_are_updated_by_id_and_listed_newest_first()
    {
        await using var store = await OpenStoreAsync();
        var older = new CommandRecord("a1", "d1", true, "rule", CommandStatus.Sent, T0, T0, T0.AddSeconds(30));
        var newer = new CommandRecord("b2", "d1", false, "manual", CommandStatus.Sent, T0.AddSeconds(5), T0.AddSeconds(5), null);
        await store.WriteAsync([], [older, newer], [], default);
        await store.WriteAsync([], [older with { Status = CommandStatus.Acknowledged, Updated = T0.AddSeconds(1) }], [], default);

        var commands = await store.CommandsAsync("d1", 10, default);

        Assert.Equal(["b2", "a1"], commands.Select(c => c.Id));
        Assert.Equal(CommandStatus.Acknowledged, commands[1].Status);
        Assert.Equal(T0.AddSeconds(30), commands[1].Expires);
        Assert.Null(commands[0].Expires);
        Assert.False(commands[0].LedOn);
    }

    [Fact]
    public async Task Devices_keep_their_first_seen_time_and_their_latest_state()
    {
        await using var store = await OpenStoreAsync();
        var last = Reading("d1", 9, 250, seq: 3, temperature: 19);
        await store.WriteAsync([], [], [new DeviceRecord("d1", T0, T0, null, null, null)], default);
        await store.WriteAsync([], [], [new DeviceRecord("d1", T0.AddHours(1), T0.AddSeconds(9), true, last, true)], default);

        var device = Assert.Single(await store.DevicesAsync(default));

        Assert.Equal(T0, device.FirstSeen);
        Assert.Equal(T0.AddSeconds(9), device.LastSeen);
        Assert.True(device.Online);
        Assert.True(device.LedOn);
        Assert.Equal(3, device.LastReading!.Seq);
        Assert.Equal(19, device.LastReading.Measurements["temperature"]);
    }

    [Fact]
    public async Task Retention_deletes_only_readings_older_than_the_cutoff()
    {
        await using var store = await OpenStoreAsync();
        await store.WriteAsync([Reading("d1", 0, 1), Reading("d1", 10, 2), Reading("d1", 20, 3)], [], [], default);

        var deleted = await store.DeleteOlderThanAsync(T0.AddSeconds(15), default);

        Assert.Equal(2, deleted);
        Assert.Equal([3.0], (await store.ReadingsAsync("d1", T0, T0.AddMinutes(1), 100, default)).Select(r => r.Measurements["light"]));
    }
}

public sealed class SqliteStorageTests : StorageContractTests, IDisposable
{
    readonly string _directory = Directory.CreateTempSubdirectory("nightlight-sqlite-").FullName;

    protected override async Task<ITelemetryStore> OpenStoreAsync()
    {
        var store = new SqliteTelemetryStore(Path.Combine(_directory, $"{Guid.NewGuid():N}.db"));
        await store.InitializeAsync(default);
        return store;
    }

    [Fact]
    public async Task The_file_survives_a_restart()
    {
        var path = Path.Combine(_directory, "restart.db");
        await using (var store = new SqliteTelemetryStore(path))
        {
            await store.InitializeAsync(default);
            await store.WriteAsync([new StoredReading("d1", DateTimeOffset.UtcNow, DateTimeOffset.UtcNow, 1, new Dictionary<string, double> { ["light"] = 5 })], [], [], default);
        }
        await using var reopened = new SqliteTelemetryStore(path);
        await reopened.InitializeAsync(default);
        Assert.Single(await reopened.ReadingsAsync("d1", DateTimeOffset.UtcNow.AddMinutes(-1), DateTimeOffset.UtcNow.AddMinutes(1), 10, default));
    }

    public void Dispose()
    {
        Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();
        Directory.Delete(_directory, recursive: true);
    }
}

/// <summary>One throwaway PostgreSQL cluster for the class; each test gets its own database.</summary>
public sealed class PostgresFixture : IAsyncLifetime
{
    public PostgresServer? Server { get; private set; }

    public async ValueTask InitializeAsync()
    {
        if (External.Find("initdb") is not null)
        {
            Server = await PostgresServer.StartAsync();
        }
    }

    /// <summary>The cluster, or a skip (a failure in CI) when PostgreSQL is not installed.</summary>
    public PostgresServer Require()
    {
        External.Require("initdb", "postgresql");
        return Server!;
    }

    public async ValueTask DisposeAsync()
    {
        if (Server is not null)
        {
            await Server.DisposeAsync();
        }
    }
}

public sealed class PostgresStorageTests(PostgresFixture postgres) : StorageContractTests, IClassFixture<PostgresFixture>
{
    protected override async Task<ITelemetryStore> OpenStoreAsync()
    {
        var store = new PostgresTelemetryStore(await postgres.Require().CreateDatabaseAsync());
        await store.InitializeAsync(default);
        return store;
    }
}
