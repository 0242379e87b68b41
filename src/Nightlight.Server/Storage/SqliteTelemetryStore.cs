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
        "CREATE UNIQUE INDEX IF NOT EXISTS readings_device_seq ON readings (device_id, seq)",
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

    protected override string Least => "MIN";

    protected override string Greatest => "MAX";

    protected override string JsonNumber(string parameter) => $"json_extract(measurements, '$.\"' || {parameter} || '\"')";

    protected override async Task<int> InsertReadingsAsync(DbConnection connection, DbTransaction transaction, IReadOnlyList<StoredReading> readings, CancellationToken cancellationToken)
    {
        await using var command = connection.CreateCommand();
        command.Transaction = transaction;
        command.CommandText = """
            INSERT INTO readings (device_id, ts, arrived, seq, light, measurements) VALUES (@device, @ts, @arrived, @seq, @light, @m)
            ON CONFLICT (device_id, seq) DO NOTHING
            """;
        var device = Add(command, "@device");
        var ts = Add(command, "@ts");
        var arrived = Add(command, "@arrived");
        var seq = Add(command, "@seq");
        var light = Add(command, "@light");
        var m = Add(command, "@m");
        command.Prepare();
        var inserted = new List<(string, long, IReadOnlyDictionary<string, double>)>();
        foreach (var r in readings)
        {
            device.Value = r.DeviceId;
            ts.Value = r.Ts.ToUnixTimeMilliseconds();
            arrived.Value = r.Arrived.ToUnixTimeMilliseconds();
            seq.Value = r.Seq is { } s ? s : DBNull.Value;
            light.Value = r.Measurements.TryGetValue("light", out var l) ? l : DBNull.Value;
            m.Value = MeasurementsJson.Write(r.Measurements);
            if (await command.ExecuteNonQueryAsync(cancellationToken) == 1)
            {
                inserted.Add((r.DeviceId, r.Ts.ToUnixTimeMilliseconds(), r.Measurements));
            }
        }
        await AddToRollupAsync(connection, transaction, inserted, cancellationToken);
        return inserted.Count;
    }

    public override ValueTask DisposeAsync()
    {
        // Pooled connections keep the file open; clear them so a test or export can delete the directory.
        SqliteConnection.ClearAllPools();
        return base.DisposeAsync();
    }
}
