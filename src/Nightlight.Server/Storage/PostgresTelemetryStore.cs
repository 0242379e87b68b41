using System.Data.Common;
using Npgsql;
using NpgsqlTypes;

namespace Nightlight.Server.Storage;

/// <summary>
/// PostgreSQL, for more than one machine or more than one server process. Readings go in by binary COPY into a
/// temporary table, then one <c>INSERT … ON CONFLICT DO NOTHING</c>, so a large batch is one round trip and
/// redelivered readings are still stored once.
/// </summary>
public sealed class PostgresTelemetryStore : SqlTelemetryStore
{
    readonly NpgsqlDataSource _dataSource;

    public PostgresTelemetryStore(string connectionString)
    {
        _dataSource = NpgsqlDataSource.Create(connectionString);
        var builder = new NpgsqlConnectionStringBuilder(connectionString);
        Location = $"{builder.Host}:{builder.Port}/{builder.Database}";
    }

    public override string Provider => "postgresql";

    public override string Location { get; }

    protected override IEnumerable<string> Schema =>
    [
        """
        CREATE TABLE IF NOT EXISTS readings (
            device_id text NOT NULL, ts bigint NOT NULL, arrived bigint NOT NULL, seq bigint NULL,
            light double precision NULL, measurements jsonb NOT NULL)
        """,
        "CREATE UNIQUE INDEX IF NOT EXISTS readings_device_seq ON readings (device_id, seq)",
        "CREATE INDEX IF NOT EXISTS readings_device_ts ON readings (device_id, ts) INCLUDE (light)",
        """
        CREATE TABLE IF NOT EXISTS readings_minute (
            device_id text NOT NULL, minute bigint NOT NULL, name text NOT NULL, n bigint NOT NULL,
            min_value double precision NOT NULL, max_value double precision NOT NULL, sum_value double precision NOT NULL,
            PRIMARY KEY (device_id, minute, name))
        """,
        """
        CREATE TABLE IF NOT EXISTS commands (
            id text PRIMARY KEY, device_id text NOT NULL, led_on boolean NOT NULL, source text NOT NULL, status text NOT NULL,
            created bigint NOT NULL, updated bigint NOT NULL, expires bigint NULL)
        """,
        "CREATE INDEX IF NOT EXISTS commands_device_created ON commands (device_id, created)",
        """
        CREATE TABLE IF NOT EXISTS devices (
            id text PRIMARY KEY, first_seen bigint NOT NULL, last_seen bigint NOT NULL, online boolean NULL,
            last_ts bigint NULL, last_seq bigint NULL, last_measurements jsonb NULL, led_on boolean NULL)
        """,
    ];

    protected override async Task<DbConnection> OpenAsync(CancellationToken cancellationToken) =>
        await _dataSource.OpenConnectionAsync(cancellationToken);

    protected override string Least => "LEAST";

    protected override string Greatest => "GREATEST";

    protected override string JsonNumber(string parameter) => $"(measurements ->> {parameter})::double precision";

    protected override string JsonValue(string parameter) => $"CAST({parameter} AS jsonb)";

    protected override async Task<int> InsertReadingsAsync(DbConnection connection, DbTransaction transaction, IReadOnlyList<StoredReading> readings, CancellationToken cancellationToken)
    {
        var npgsql = (NpgsqlConnection)connection;
        await using (var create = npgsql.CreateCommand())
        {
            create.Transaction = (NpgsqlTransaction)transaction;
            create.CommandText = "CREATE TEMP TABLE IF NOT EXISTS readings_in (LIKE readings) ON COMMIT DELETE ROWS";
            await create.ExecuteNonQueryAsync(cancellationToken);
        }
        await using (var copy = await npgsql.BeginBinaryImportAsync(
            "COPY readings_in (device_id, ts, arrived, seq, light, measurements) FROM STDIN (FORMAT BINARY)", cancellationToken))
        {
            foreach (var r in readings)
            {
                await copy.StartRowAsync(cancellationToken);
                await copy.WriteAsync(r.DeviceId, NpgsqlDbType.Text, cancellationToken);
                await copy.WriteAsync(r.Ts.ToUnixTimeMilliseconds(), NpgsqlDbType.Bigint, cancellationToken);
                await copy.WriteAsync(r.Arrived.ToUnixTimeMilliseconds(), NpgsqlDbType.Bigint, cancellationToken);
                if (r.Seq is { } s)
                {
                    await copy.WriteAsync(s, NpgsqlDbType.Bigint, cancellationToken);
                }
                else
                {
                    await copy.WriteNullAsync(cancellationToken);
                }
                if (r.Measurements.TryGetValue("light", out var light))
                {
                    await copy.WriteAsync(light, NpgsqlDbType.Double, cancellationToken);
                }
                else
                {
                    await copy.WriteNullAsync(cancellationToken);
                }
                await copy.WriteAsync(MeasurementsJson.Write(r.Measurements), NpgsqlDbType.Jsonb, cancellationToken);
            }
            await copy.CompleteAsync(cancellationToken);
        }
        await using var insert = npgsql.CreateCommand();
        insert.Transaction = (NpgsqlTransaction)transaction;
        // DO NOTHING also skips a duplicate inside the same batch (a redelivery close behind the original).
        insert.CommandText = "INSERT INTO readings SELECT * FROM readings_in ON CONFLICT (device_id, seq) DO NOTHING RETURNING device_id, ts, measurements::text";
        var inserted = new List<(string, long, IReadOnlyDictionary<string, double>)>();
        await using (var reader = await insert.ExecuteReaderAsync(cancellationToken))
        {
            while (await reader.ReadAsync(cancellationToken))
            {
                inserted.Add((reader.GetString(0), reader.GetInt64(1), MeasurementsJson.Read(reader.GetString(2))));
            }
        }
        await AddToRollupAsync(connection, transaction, inserted, cancellationToken);
        return inserted.Count;
    }

    public override async ValueTask DisposeAsync()
    {
        await _dataSource.DisposeAsync();
        await base.DisposeAsync();
    }
}
