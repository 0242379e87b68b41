using System.Buffers;
using System.Data.Common;
using Microsoft.Data.Sqlite;

namespace Nightlight.Server.Storage;

/// <summary>
/// The default store: one SQLite file in the data directory, in WAL mode so the history API reads while the writer
/// writes. <c>synchronous=NORMAL</c>: a power cut can lose the last batch, never corrupt the file.
/// </summary>
public sealed class SqliteTelemetryStore(string path) : SqlTelemetryStore
{
    readonly string _connectionString = new SqliteConnectionStringBuilder
    {
        DataSource = path,
        Pooling = true,
        DefaultTimeout = 30,
    }.ToString();

    public override string Provider => "sqlite";

    public override string Location => path;

    protected override IEnumerable<string> Schema =>
    [
        "PRAGMA journal_mode = WAL",
        """
        CREATE TABLE IF NOT EXISTS readings (
            device_id TEXT NOT NULL, ts INTEGER NOT NULL, arrived INTEGER NOT NULL, seq INTEGER NULL,
            light REAL NULL, measurements TEXT NOT NULL)
        """,
        // Only readings with a seq can be redelivered copies of each other, so only they are in the unique index: a
        // lesson device's readings (no seq) skip it, and a batch from many of them dirties one index fewer (about half
        // again as many readings/s from 1,000 such devices, docs/benchmarks.md, session 7). A database from before keeps its
        // full index until the partial one exists, then loses it.
        "CREATE UNIQUE INDEX IF NOT EXISTS readings_device_seq_given ON readings (device_id, seq) WHERE seq IS NOT NULL",
        "DROP INDEX IF EXISTS readings_device_seq",
        // Covering index: a light history over a million rows never touches the table itself.
        "CREATE INDEX IF NOT EXISTS readings_device_ts ON readings (device_id, ts, light)",
        """
        CREATE TABLE IF NOT EXISTS readings_minute (
            device_id TEXT NOT NULL, minute INTEGER NOT NULL, name TEXT NOT NULL, n INTEGER NOT NULL,
            min_value REAL NOT NULL, max_value REAL NOT NULL, sum_value REAL NOT NULL, PRIMARY KEY (device_id, minute, name))
        """,
        """
        CREATE TABLE IF NOT EXISTS commands (
            id TEXT PRIMARY KEY, device_id TEXT NOT NULL, led_on INTEGER NOT NULL, source TEXT NOT NULL, status TEXT NOT NULL,
            created INTEGER NOT NULL, updated INTEGER NOT NULL, expires INTEGER NULL)
        """,
        "CREATE INDEX IF NOT EXISTS commands_device_created ON commands (device_id, created)",
        """
        CREATE TABLE IF NOT EXISTS devices (
            id TEXT PRIMARY KEY, first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL, online INTEGER NULL,
            last_ts INTEGER NULL, last_seq INTEGER NULL, last_measurements TEXT NULL, led_on INTEGER NULL)
        """,
    ];

    protected override async Task<DbConnection> OpenAsync(CancellationToken cancellationToken)
    {
        var connection = new SqliteConnection(_connectionString);
        await connection.OpenAsync(cancellationToken);
        await using var pragma = connection.CreateCommand();
        pragma.CommandText = "PRAGMA synchronous = NORMAL";
        await pragma.ExecuteNonQueryAsync(cancellationToken);
        return connection;
    }

    /// <summary>
    /// The writer's connection keeps the pages its batches touch in memory and checkpoints the WAL less often. A batch
    /// from a thousand devices dirties a leaf of both indexes for each of them: with SQLite's defaults (2 MB of cache,
    /// a checkpoint every 1,000 pages) nearly every batch read those pages back and copied them into the database
    /// again, and the writer spent more time in system calls than in SQLite (docs/benchmarks.md, session 4). The cache
    /// is a ceiling per connection, filled only as pages are used; readers keep the defaults.
    /// </summary>
    protected override async Task<DbConnection> OpenForWriteAsync(CancellationToken cancellationToken)
    {
        var connection = await OpenAsync(cancellationToken);
        await using var pragma = connection.CreateCommand();
        pragma.CommandText = "PRAGMA cache_size = -65536; PRAGMA wal_autocheckpoint = 10000; PRAGMA mmap_size = 268435456";
        await pragma.ExecuteNonQueryAsync(cancellationToken);
        return connection;
    }

    protected override string Least => "MIN";

    protected override string Greatest => "MAX";

    protected override string JsonNumber(string parameter) => $"json_extract(measurements, '$.\"' || {parameter} || '\"')";

    // The batch's rows go through SqliteStatement (bound by position, prepared once per batch): see there why.

    protected override async Task<int> InsertReadingsAsync(DbConnection connection, DbTransaction transaction, IReadOnlyList<StoredReading> readings, CancellationToken cancellationToken)
    {
        var sums = RentSums();
        var inserted = 0;
        using (var insert = new SqliteStatement((SqliteConnection)connection, """
            INSERT INTO readings (device_id, ts, arrived, seq, light, measurements) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
            ON CONFLICT DO NOTHING
            """))
        {
            // Device by device (arrival order within each): both indexes begin with the device, so consecutive rows
            // then land on the same index leaves instead of one leaf per device in turn. 100 devices: 101,000-103,000
            // readings/s against 79,000-93,000; 1,000 devices: 62,000-71,000 against 49,000-52,000 (storage-bench,
            // alternated; docs/benchmarks.md, session 8).
            var order = ArrayPool<int>.Shared.Rent(readings.Count);
            try
            {
                for (var i = 0; i < readings.Count; i++)
                {
                    order[i] = i;
                }
                order.AsSpan(0, readings.Count).Sort((a, b) =>
                {
                    var byDevice = string.CompareOrdinal(readings[a].DeviceId, readings[b].DeviceId);
                    return byDevice != 0 ? byDevice : a.CompareTo(b);
                });
                for (var n = 0; n < readings.Count; n++)
                {
                    var at = order[n];
                    var r = readings[at];
                    cancellationToken.ThrowIfCancellationRequested();
                    var ts = r.Ts.ToUnixTimeMilliseconds();
                    insert.Bind(1, r.DeviceId);
                    insert.Bind(2, ts);
                    insert.Bind(3, r.Arrived.ToUnixTimeMilliseconds());
                    insert.Bind(4, r.Seq);
                    if (r.Measurements.TryGetValue("light", out var light))
                    {
                        insert.Bind(5, light);
                    }
                    else
                    {
                        insert.BindNull(5);
                    }
                    insert.BindUtf8(6, MeasurementsJson.WriteUtf8(r.Measurements));
                    if (insert.Execute() == 1)
                    {
                        inserted++;
                        sums.Add(r.DeviceId, ts, r.Measurements);
                    }
                }
            }
            finally
            {
                ArrayPool<int>.Shared.Return(order);
            }
        }
        await AddToRollupAsync(connection, transaction, sums, cancellationToken);
        return inserted;
    }

    protected override Task UpsertCommandsAsync(DbConnection connection, DbTransaction transaction, IReadOnlyList<CommandRecord> commands, CancellationToken cancellationToken)
    {
        using var upsert = new SqliteStatement((SqliteConnection)connection, $"""
            {InsertCommands} VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
            {CommandsConflictClause}
            """);
        foreach (var c in commands)
        {
            cancellationToken.ThrowIfCancellationRequested();
            upsert.Bind(1, c.Id);
            upsert.Bind(2, c.DeviceId);
            upsert.Bind(3, c.LedOn);
            upsert.Bind(4, c.Source);
            upsert.Bind(5, c.Status);
            upsert.Bind(6, c.Created.ToUnixTimeMilliseconds());
            upsert.Bind(7, c.Updated.ToUnixTimeMilliseconds());
            upsert.Bind(8, c.Expires?.ToUnixTimeMilliseconds());
            upsert.Execute();
        }
        return Task.CompletedTask;
    }

    protected override Task UpsertDevicesAsync(DbConnection connection, DbTransaction transaction, IReadOnlyList<DeviceRecord> devices, CancellationToken cancellationToken)
    {
        using var upsert = new SqliteStatement((SqliteConnection)connection, $"""
            {InsertDevices} VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
            {DevicesConflictClause}
            """);
        foreach (var d in devices)
        {
            cancellationToken.ThrowIfCancellationRequested();
            upsert.Bind(1, d.Id);
            upsert.Bind(2, d.FirstSeen.ToUnixTimeMilliseconds());
            upsert.Bind(3, d.LastSeen.ToUnixTimeMilliseconds());
            upsert.Bind(4, d.Online);
            upsert.Bind(5, d.LastReading?.Ts.ToUnixTimeMilliseconds());
            upsert.Bind(6, d.LastReading?.Seq);
            if (d.LastReading is { } last)
            {
                upsert.BindUtf8(7, MeasurementsJson.WriteUtf8(last.Measurements));
            }
            else
            {
                upsert.BindNull(7);
            }
            upsert.Bind(8, d.LedOn);
            upsert.Execute();
        }
        return Task.CompletedTask;
    }

    protected override Task UpsertRollupAsync(DbConnection connection, DbTransaction transaction, IReadOnlyList<MinuteRollup> rows, CancellationToken cancellationToken)
    {
        using var upsert = new SqliteStatement((SqliteConnection)connection, $"""
            {InsertRollup} VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
            {RollupConflictClause}
            """);
        foreach (var row in rows)
        {
            cancellationToken.ThrowIfCancellationRequested();
            upsert.Bind(1, row.DeviceId);
            upsert.Bind(2, row.Minute);
            upsert.Bind(3, row.Name);
            upsert.Bind(4, row.N);
            upsert.Bind(5, row.Min);
            upsert.Bind(6, row.Max);
            upsert.Bind(7, row.Sum);
            upsert.Execute();
        }
        return Task.CompletedTask;
    }

    public override ValueTask DisposeAsync()
    {
        // Pooled connections keep the file open; clear them so a test or export can delete the directory.
        SqliteConnection.ClearAllPools();
        return base.DisposeAsync();
    }
}
