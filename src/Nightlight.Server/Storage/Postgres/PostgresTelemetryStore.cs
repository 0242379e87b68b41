using System.Buffers;
using System.Data.Common;
using System.Runtime.CompilerServices;
using Npgsql;
using NpgsqlTypes;

namespace Nightlight.Server.Storage.Postgres;

/// <summary>
/// PostgreSQL, for more than one machine or more than one server process. A batch of readings goes in by one binary
/// COPY, or, when it holds a reading stored before, by one <c>INSERT … ON CONFLICT DO NOTHING</c> over arrays, so a
/// large batch is a few round trips and redelivered readings are still stored once.
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
            light double precision NULL, measurements jsonb NOT NULL, epoch bigint NOT NULL DEFAULT 0)
        """,
        // A database from before epochs: its readings become epoch 0 (a constant default adds no rewrite of the table).
        "ALTER TABLE readings ADD COLUMN IF NOT EXISTS epoch bigint NOT NULL DEFAULT 0",
        // Only readings with a seq are in the unique index (see SqliteTelemetryStore); a seq is unique within its
        // device's epoch. An older database's indexes by (device, seq) go.
        "CREATE UNIQUE INDEX IF NOT EXISTS readings_device_epoch_seq ON readings (device_id, epoch, seq) WHERE seq IS NOT NULL",
        "DROP INDEX IF EXISTS readings_device_seq_given",
        "DROP INDEX IF EXISTS readings_device_seq",
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
        // Versions before switches stored only LED commands.
        "ALTER TABLE commands ADD COLUMN IF NOT EXISTS switch_name text NOT NULL DEFAULT 'led_on'",
        "CREATE INDEX IF NOT EXISTS commands_device_created ON commands (device_id, created)",
        """
        CREATE TABLE IF NOT EXISTS devices (
            id text PRIMARY KEY, first_seen bigint NOT NULL, last_seen bigint NOT NULL, online boolean NULL,
            last_ts bigint NULL, last_seq bigint NULL, last_measurements jsonb NULL, led_on boolean NULL)
        """,
    ];

    /// <summary>
    /// Creates the schema in one transaction under an advisory lock: two servers starting together on one database
    /// both ran <c>CREATE TABLE IF NOT EXISTS</c>, both saw no table, and one died on a duplicate key in the catalog.
    /// </summary>
    public override async Task InitializeAsync(CancellationToken cancellationToken)
    {
        await using var connection = await _dataSource.OpenConnectionAsync(cancellationToken);
        await using var transaction = await connection.BeginTransactionAsync(cancellationToken);
        await using (var schemaLock = new NpgsqlCommand("SELECT pg_advisory_xact_lock(4670001)", connection, transaction))
        {
            await schemaLock.ExecuteNonQueryAsync(cancellationToken);
        }
        foreach (var statement in Schema)
        {
            await using var command = new NpgsqlCommand(statement, connection, transaction);
            await command.ExecuteNonQueryAsync(cancellationToken);
        }
        await transaction.CommitAsync(cancellationToken);
    }

    protected override async Task<DbConnection> OpenAsync(CancellationToken cancellationToken) =>
        await _dataSource.OpenConnectionAsync(cancellationToken);

    protected override string SeqsTable => "readings";

    protected override string Least => "LEAST";

    protected override string Greatest => "GREATEST";

    /// <summary>SQL for a numeric measurement read out of the <c>measurements</c> JSON, named by a parameter.</summary>
    static string JsonNumber(string parameter) => $"(measurements ->> {parameter})::double precision";

    protected override async IAsyncEnumerable<StoredReading> QueryReadingsAsync(string deviceId, DateTimeOffset from, DateTimeOffset to, int? limit,
        [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        await using var connection = await OpenAsync(cancellationToken);
        await using var command = connection.CreateCommand();
        command.CommandText = "SELECT ts, arrived, seq, measurements, epoch FROM readings WHERE device_id = @device AND ts >= @from AND ts < @to ORDER BY ts, seq, arrived" +
            (limit is null ? "" : " LIMIT @limit");
        Add(command, "@device", deviceId);
        Add(command, "@from", from.ToUnixTimeMilliseconds());
        Add(command, "@to", to.ToUnixTimeMilliseconds());
        if (limit is { } l)
        {
            Add(command, "@limit", l);
        }
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            yield return new StoredReading(deviceId,
                DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(0)),
                DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(1)),
                reader.IsDBNull(2) ? null : reader.GetInt64(2),
                MeasurementsJson.Read(reader.GetString(3))) { Epoch = reader.GetInt64(4) };
        }
    }

    public override async Task<long> CountReadingsAsync(string deviceId, DateTimeOffset from, DateTimeOffset to, CancellationToken cancellationToken)
    {
        await using var connection = await OpenAsync(cancellationToken);
        await using var command = connection.CreateCommand();
        command.CommandText = "SELECT COUNT(*) FROM readings WHERE device_id = @device AND ts >= @from AND ts < @to";
        Add(command, "@device", deviceId);
        Add(command, "@from", from.ToUnixTimeMilliseconds());
        Add(command, "@to", to.ToUnixTimeMilliseconds());
        return Convert.ToInt64(await command.ExecuteScalarAsync(cancellationToken), System.Globalization.CultureInfo.InvariantCulture);
    }

    protected override async Task AddRawAsync(DbConnection connection, string deviceId, long fromMs, long toMs, long origin, long bucketMs, List<string> names,
        SortedDictionary<long, Accumulator> buckets, CancellationToken cancellationToken)
    {
        if (toMs <= fromMs)
        {
            return;
        }
        await using var command = connection.CreateCommand();
        var columns = new List<string>();
        for (var i = 0; i < names.Count; i++)
        {
            // light has its own column (and a covering index); any other measurement is read out of the JSON.
            var value = names[i] == "light" ? "light" : JsonNumber($"@n{i}");
            if (names[i] != "light")
            {
                Add(command, $"@n{i}", names[i]);
            }
            columns.Add($"COUNT({value}), MIN({value}), MAX({value}), SUM({value})");
        }
        command.CommandText = $"""
            SELECT (ts - @origin) / @bucket AS b, COUNT(*){string.Concat(columns.Select(c => ", " + c))}
            FROM readings WHERE device_id = @device AND ts >= @from AND ts < @to
            GROUP BY b
            """;
        AddBucketParameters(command, deviceId, fromMs, toMs, bucketMs, origin);
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            var b = reader.GetInt64(0);
            var acc = Bucket(buckets, b);
            acc.Count += reader.GetInt64(1);
            for (var i = 0; i < names.Count; i++)
            {
                var column = 2 + i * 4;
                var n = reader.GetInt64(column);
                if (n > 0)
                {
                    acc.Add(names[i], n, Number(reader, column + 1), Number(reader, column + 2), Number(reader, column + 3));
                }
            }
        }
    }

    protected override async Task<long> DeleteReadingsOlderThanAsync(DbConnection connection, long cutoffMs, CancellationToken cancellationToken)
    {
        await using var command = connection.CreateCommand();
        command.CommandText = "DELETE FROM readings WHERE ts < @cutoff";
        Add(command, "@cutoff", cutoffMs);
        return await command.ExecuteNonQueryAsync(cancellationToken);
    }

    /// <summary>Set when a batch held readings already stored; the next batch then skips the optimistic COPY.</summary>
    volatile bool _lastBatchHadStored;

    protected override async Task<int> InsertReadingsAsync(DbConnection connection, DbTransaction transaction, IReadOnlyList<StoredReading> readings, CancellationToken cancellationToken)
    {
        var npgsql = (NpgsqlConnection)connection;
        var npgsqlTransaction = (NpgsqlTransaction)transaction;
        using var batch = new KeyOrder(readings);
        if (!_lastBatchHadStored)
        {
            // Optimistic: a batch rarely holds a reading stored before, so COPY straight into the table and let the
            // unique index on (device_id, epoch, seq) refuse the rare one. ON CONFLICT costs every row an extra index lookup
            // and a speculative insertion, about as much as the insert itself. Refused, the savepoint undoes the COPY
            // and the batch takes the path that skips what is there.
            await npgsqlTransaction.SaveAsync("readings_copy", cancellationToken);
            MinuteSums? copied = null;
            try
            {
                copied = await CopyAsync(npgsql, batch, cancellationToken);
            }
            catch (PostgresException e) when (e.SqlState == PostgresErrorCodes.UniqueViolation)
            {
                await npgsqlTransaction.RollbackAsync("readings_copy", cancellationToken);
            }
            if (copied is not null)
            {
                await AddToRollupAsync(connection, transaction, copied, cancellationToken);
                return batch.Count;
            }
        }
        var inserted = await InsertSkippingStoredAsync(npgsql, npgsqlTransaction, batch, cancellationToken);
        // Redeliveries come in runs (a device replaying its outbox): skip the COPY that would fail again.
        _lastBatchHadStored = inserted.Count < batch.Count;
        await AddToRollupAsync(connection, transaction, inserted.Select(r => (r.DeviceId, r.Ts.ToUnixTimeMilliseconds(), r.Measurements)), cancellationToken);
        return inserted.Count;
    }

    /// <summary>
    /// The batch with a reading repeated inside it (a redelivery close behind the original) kept once, the first time
    /// it came, in (device, epoch, seq) order. Two server processes that meet the same readings then take their index entries
    /// in the same order and wait for each other instead of deadlocking.
    /// <para>
    /// The order is kept as indexes into the batch, in an array from the shared pool, not as a sorted copy of the
    /// readings: a batch is up to 20,000 readings, and an array of that many references is a large object, which
    /// the collector treats as old. Each such copy, dead once the batch was written, still held its readings, and
    /// every young collection until the next full one copied them: about 40 MB each at 50,000 readings a second.
    /// </para>
    /// </summary>
    sealed class KeyOrder : IReadOnlyList<StoredReading>, IDisposable
    {
        readonly IReadOnlyList<StoredReading> _readings;
        readonly int[] _order;

        public KeyOrder(IReadOnlyList<StoredReading> readings)
        {
            _readings = readings;
            _order = ArrayPool<int>.Shared.Rent(Math.Max(1, readings.Count));
            var order = _order.AsSpan(0, readings.Count);
            // Usually already in order with nothing repeated (one device sending in order): then one look is all it costs.
            var ordered = true;
            for (var i = 0; i < order.Length; i++)
            {
                order[i] = i;
                if (i > 0 && ordered)
                {
                    var c = Compare(readings[i - 1], readings[i]);
                    ordered = c < 0 || (c == 0 && readings[i].Seq is null);
                }
            }
            if (ordered)
            {
                Count = order.Length;
                return;
            }
            // Stable (ties by arrival), so of a repeated reading the first delivery is the one kept.
            order.Sort((a, b) =>
            {
                var c = Compare(readings[a], readings[b]);
                return c != 0 ? c : a.CompareTo(b);
            });
            var kept = 0;
            foreach (var at in order)
            {
                if (kept == 0 || readings[at].Seq is null || Compare(readings[order[kept - 1]], readings[at]) != 0)
                {
                    order[kept++] = at;
                }
            }
            Count = kept;
        }

        public int Count { get; }

        public StoredReading this[int index] => (uint)index < (uint)Count ? _readings[_order[index]] : throw new ArgumentOutOfRangeException(nameof(index));

        public IEnumerator<StoredReading> GetEnumerator()
        {
            for (var i = 0; i < Count; i++)
            {
                yield return _readings[_order[i]];
            }
        }

        System.Collections.IEnumerator System.Collections.IEnumerable.GetEnumerator() => GetEnumerator();

        public void Dispose() => ArrayPool<int>.Shared.Return(_order);
    }

    static int Compare(StoredReading a, StoredReading b)
    {
        var byDevice = string.CompareOrdinal(a.DeviceId, b.DeviceId);
        var byEpoch = a.Epoch.CompareTo(b.Epoch);
        return byDevice != 0 ? byDevice : byEpoch != 0 ? byEpoch : Nullable.Compare(a.Seq, b.Seq);
    }

    /// <summary>COPYs the batch into <c>readings</c>; returns its minute rollup, summed up while PostgreSQL takes the rows in.</summary>
    async Task<MinuteSums> CopyAsync(NpgsqlConnection connection, KeyOrder readings, CancellationToken cancellationToken)
    {
        var sums = RentSums();
        await using var copy = await connection.BeginBinaryImportAsync(
            "COPY readings (device_id, ts, arrived, seq, light, measurements, epoch) FROM STDIN (FORMAT BINARY)", cancellationToken);
        for (var i = 0; i < readings.Count; i++)
        {
            var r = readings[i];
            var ts = r.Ts.ToUnixTimeMilliseconds();
            await copy.StartRowAsync(cancellationToken);
            await copy.WriteAsync(r.DeviceId, NpgsqlDbType.Text, cancellationToken);
            await copy.WriteAsync(ts, NpgsqlDbType.Bigint, cancellationToken);
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
            await copy.WriteAsync(r.Epoch, NpgsqlDbType.Bigint, cancellationToken);
            sums.Add(r.DeviceId, ts, r.Measurements);
        }
        await copy.CompleteAsync(cancellationToken);
        return sums;
    }

    /// <summary>
    /// The batch as arrays in one <c>INSERT … ON CONFLICT DO NOTHING</c>, which skips a reading whose device, epoch and seq
    /// are stored (by an earlier batch, or by another server process at the same moment). Returns the readings that went in.
    /// </summary>
    static async Task<IReadOnlyList<StoredReading>> InsertSkippingStoredAsync(NpgsqlConnection connection, NpgsqlTransaction transaction,
        IReadOnlyList<StoredReading> readings, CancellationToken cancellationToken)
    {
        var devices = new string[readings.Count];
        var ts = new long[readings.Count];
        var arrived = new long[readings.Count];
        var seqs = new long?[readings.Count];
        var lights = new double?[readings.Count];
        var measurements = new string[readings.Count];
        var epochs = new long[readings.Count];
        for (var i = 0; i < readings.Count; i++)
        {
            var r = readings[i];
            devices[i] = r.DeviceId;
            ts[i] = r.Ts.ToUnixTimeMilliseconds();
            arrived[i] = r.Arrived.ToUnixTimeMilliseconds();
            seqs[i] = r.Seq;
            lights[i] = r.Measurements.TryGetValue("light", out var light) ? light : null;
            measurements[i] = MeasurementsJson.Write(r.Measurements);
            epochs[i] = r.Epoch;
        }
        await using var insert = connection.CreateCommand();
        insert.Transaction = transaction;
        insert.CommandText = """
            INSERT INTO readings (device_id, ts, arrived, seq, light, measurements, epoch)
            SELECT * FROM unnest(@device, @ts, @arrived, @seq, @light, @measurements, @epoch)
            ON CONFLICT (device_id, epoch, seq) WHERE seq IS NOT NULL DO NOTHING RETURNING device_id, epoch, seq
            """;
        insert.Parameters.Add(new NpgsqlParameter("device", NpgsqlDbType.Array | NpgsqlDbType.Text) { Value = devices });
        insert.Parameters.Add(new NpgsqlParameter("ts", NpgsqlDbType.Array | NpgsqlDbType.Bigint) { Value = ts });
        insert.Parameters.Add(new NpgsqlParameter("arrived", NpgsqlDbType.Array | NpgsqlDbType.Bigint) { Value = arrived });
        insert.Parameters.Add(new NpgsqlParameter("seq", NpgsqlDbType.Array | NpgsqlDbType.Bigint) { Value = seqs });
        insert.Parameters.Add(new NpgsqlParameter("light", NpgsqlDbType.Array | NpgsqlDbType.Double) { Value = lights });
        insert.Parameters.Add(new NpgsqlParameter("measurements", NpgsqlDbType.Array | NpgsqlDbType.Jsonb) { Value = measurements });
        insert.Parameters.Add(new NpgsqlParameter("epoch", NpgsqlDbType.Array | NpgsqlDbType.Bigint) { Value = epochs });
        // The batch holds each (device, epoch, seq) once, so what comes back names exactly the readings that went in.
        var stored = new HashSet<(string, long, long)>();
        await using (var reader = await insert.ExecuteReaderAsync(cancellationToken))
        {
            while (await reader.ReadAsync(cancellationToken))
            {
                if (!reader.IsDBNull(2))
                {
                    stored.Add((reader.GetString(0), reader.GetInt64(1), reader.GetInt64(2)));
                }
            }
        }
        return readings.Where(r => r.Seq is not { } s || stored.Contains((r.DeviceId, r.Epoch, s))).ToList();
    }

    protected override async Task UpsertRollupAsync(DbConnection connection, DbTransaction transaction, IReadOnlyList<MinuteRollup> rows, CancellationToken cancellationToken)
    {
        await using var command = ((NpgsqlConnection)connection).CreateCommand();
        command.Transaction = (NpgsqlTransaction)transaction;
        // One statement for the batch's minutes instead of one round trip each.
        command.CommandText = $"""
            {InsertRollup}
            SELECT * FROM unnest(@device, @minute, @name, @n, @min, @max, @sum)
            {RollupConflictClause}
            """;
        AddArray(command, "device", NpgsqlDbType.Text, rows.Select(r => r.DeviceId));
        AddArray(command, "minute", NpgsqlDbType.Bigint, rows.Select(r => r.Minute));
        AddArray(command, "name", NpgsqlDbType.Text, rows.Select(r => r.Name));
        AddArray(command, "n", NpgsqlDbType.Bigint, rows.Select(r => r.N));
        AddArray(command, "min", NpgsqlDbType.Double, rows.Select(r => r.Min));
        AddArray(command, "max", NpgsqlDbType.Double, rows.Select(r => r.Max));
        AddArray(command, "sum", NpgsqlDbType.Double, rows.Select(r => r.Sum));
        await command.ExecuteNonQueryAsync(cancellationToken);
    }

    protected override async Task UpsertCommandsAsync(DbConnection connection, DbTransaction transaction, IReadOnlyList<CommandRecord> commands, CancellationToken cancellationToken)
    {
        var rows = LatestById(commands, c => c.Id);
        await using var command = ((NpgsqlConnection)connection).CreateCommand();
        command.Transaction = (NpgsqlTransaction)transaction;
        command.CommandText = $"""
            {InsertCommands}
            SELECT * FROM unnest(@id, @device, @led, @source, @status, @created, @updated, @expires, @switch)
            {CommandsConflictClause}
            """;
        AddArray(command, "id", NpgsqlDbType.Text, rows.Select(c => c.Id));
        AddArray(command, "device", NpgsqlDbType.Text, rows.Select(c => c.DeviceId));
        AddArray(command, "led", NpgsqlDbType.Boolean, rows.Select(c => c.LedOn));
        AddArray(command, "source", NpgsqlDbType.Text, rows.Select(c => c.Source));
        AddArray(command, "status", NpgsqlDbType.Text, rows.Select(c => c.Status));
        AddArray(command, "created", NpgsqlDbType.Bigint, rows.Select(c => c.Created.ToUnixTimeMilliseconds()));
        AddArray(command, "updated", NpgsqlDbType.Bigint, rows.Select(c => c.Updated.ToUnixTimeMilliseconds()));
        AddArray(command, "expires", NpgsqlDbType.Bigint, rows.Select(c => c.Expires?.ToUnixTimeMilliseconds()));
        AddArray(command, "switch", NpgsqlDbType.Text, rows.Select(c => c.Switch));
        await command.ExecuteNonQueryAsync(cancellationToken);
    }

    protected override async Task UpsertDevicesAsync(DbConnection connection, DbTransaction transaction, IReadOnlyList<DeviceRecord> devices, CancellationToken cancellationToken)
    {
        var rows = LatestById(devices, d => d.Id);
        await using var command = ((NpgsqlConnection)connection).CreateCommand();
        command.Transaction = (NpgsqlTransaction)transaction;
        command.CommandText = $"""
            {InsertDevices}
            SELECT * FROM unnest(@id, @first, @last, @online, @ts, @seq, @measurements, @led)
            {DevicesConflictClause}
            """;
        AddArray(command, "id", NpgsqlDbType.Text, rows.Select(d => d.Id));
        AddArray(command, "first", NpgsqlDbType.Bigint, rows.Select(d => d.FirstSeen.ToUnixTimeMilliseconds()));
        AddArray(command, "last", NpgsqlDbType.Bigint, rows.Select(d => d.LastSeen.ToUnixTimeMilliseconds()));
        AddArray(command, "online", NpgsqlDbType.Boolean, rows.Select(d => d.Online));
        AddArray(command, "ts", NpgsqlDbType.Bigint, rows.Select(d => d.LastReading?.Ts.ToUnixTimeMilliseconds()));
        AddArray(command, "seq", NpgsqlDbType.Bigint, rows.Select(d => d.LastReading?.Seq));
        command.Parameters.Add(new NpgsqlParameter("measurements", NpgsqlDbType.Array | NpgsqlDbType.Jsonb)
        {
            Value = rows.Select(d => d.LastReading is { } r ? MeasurementsJson.Write(r.Measurements) : null).ToArray(),
        });
        AddArray(command, "led", NpgsqlDbType.Boolean, rows.Select(d => d.LedOn));
        await command.ExecuteNonQueryAsync(cancellationToken);
    }

    /// <summary>
    /// One row per id (the last given), in id order: one statement may update a row only once, and two server
    /// processes that update the same rows lock them in the same order, so they wait instead of deadlocking.
    /// </summary>
    static List<T> LatestById<T>(IReadOnlyList<T> rows, Func<T, string> id)
    {
        var byId = new Dictionary<string, T>(StringComparer.Ordinal);
        foreach (var row in rows)
        {
            byId[id(row)] = row;
        }
        return [.. byId.OrderBy(r => r.Key, StringComparer.Ordinal).Select(r => r.Value)];
    }

    /// <summary>One column of a batch as an array parameter, for <c>unnest</c>.</summary>
    static void AddArray<T>(NpgsqlCommand command, string name, NpgsqlDbType type, IEnumerable<T> values) =>
        command.Parameters.Add(new NpgsqlParameter(name, NpgsqlDbType.Array | type) { Value = values.ToArray() });

    public override async ValueTask DisposeAsync()
    {
        await _dataSource.DisposeAsync();
        await base.DisposeAsync();
    }
}
