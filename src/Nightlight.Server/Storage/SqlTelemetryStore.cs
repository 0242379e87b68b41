using System.Data.Common;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Nightlight.Protocol;

namespace Nightlight.Server.Storage;

/// <summary>
/// The SQL both engines share: commands, devices, the per-minute rollup and the batch's transaction. Times are Unix
/// milliseconds in <c>bigint</c> columns, so bucketing is integer division in either engine. Each engine keeps raw
/// readings its own way: PostgreSQL a row per reading, SQLite a row per few seconds of a device's readings.
/// </summary>
public abstract class SqlTelemetryStore : ITelemetryStore
{
    public abstract string Provider { get; }

    public abstract string Location { get; }

    protected abstract Task<DbConnection> OpenAsync(CancellationToken cancellationToken);

    /// <summary>The connection a batch is written on; the engine may tune it for writing.</summary>
    protected virtual Task<DbConnection> OpenForWriteAsync(CancellationToken cancellationToken) => OpenAsync(cancellationToken);

    /// <summary>Statements that create the tables and indexes, run one by one.</summary>
    protected abstract IEnumerable<string> Schema { get; }

    /// <summary>Inserts readings, skipping a (device, epoch, seq) already stored; returns how many went in.</summary>
    protected abstract Task<int> InsertReadingsAsync(DbConnection connection, DbTransaction transaction, IReadOnlyList<StoredReading> readings, CancellationToken cancellationToken);

    public virtual async Task InitializeAsync(CancellationToken cancellationToken)
    {
        await using var connection = await OpenAsync(cancellationToken);
        foreach (var statement in Schema)
        {
            await using var command = connection.CreateCommand();
            command.CommandText = statement;
            await command.ExecuteNonQueryAsync(cancellationToken);
        }
    }

    /// <inheritdoc/>
    public virtual Task<string?> CheckIntegrityAsync(CancellationToken cancellationToken) => Task.FromResult<string?>(null);

    public async Task<int> WriteAsync(IReadOnlyList<StoredReading> readings, IReadOnlyList<CommandRecord> commands,
        IReadOnlyList<DeviceRecord> devices, CancellationToken cancellationToken)
    {
        try
        {
            await using var connection = await OpenForWriteAsync(cancellationToken);
            await using var transaction = await connection.BeginTransactionAsync(cancellationToken);
            var inserted = readings.Count == 0 ? 0 : await InsertReadingsAsync(connection, transaction, readings, cancellationToken);
            if (commands.Count > 0)
            {
                await UpsertCommandsAsync(connection, transaction, commands, cancellationToken);
            }
            if (devices.Count > 0)
            {
                await UpsertDevicesAsync(connection, transaction, devices, cancellationToken);
            }
            await transaction.CommitAsync(cancellationToken);
            return inserted;
        }
        catch
        {
            WriteFailed();
            throw;
        }
    }

    /// <summary>Called when a batch's transaction did not commit: whatever the engine remembered of it is void.</summary>
    protected virtual void WriteFailed()
    {
    }

    /// <summary>Inserts commands or updates their status, by id.</summary>
    protected abstract Task UpsertCommandsAsync(DbConnection connection, DbTransaction transaction, IReadOnlyList<CommandRecord> commands, CancellationToken cancellationToken);

    /// <summary>Inserts devices or updates their latest state, by id.</summary>
    protected abstract Task UpsertDevicesAsync(DbConnection connection, DbTransaction transaction, IReadOnlyList<DeviceRecord> devices, CancellationToken cancellationToken);

    /// <summary>The start of every engine's upsert into <c>commands</c>: its columns, in the order the values follow.</summary>
    protected const string InsertCommands = "INSERT INTO commands (id, device_id, led_on, source, status, created, updated, expires, switch_name)";

    /// <summary>A command already stored keeps its row and takes the new status.</summary>
    protected const string CommandsConflictClause = "ON CONFLICT (id) DO UPDATE SET status = excluded.status, updated = excluded.updated";

    /// <summary>The start of every engine's upsert into <c>devices</c>: its columns, in the order the values follow.</summary>
    protected const string InsertDevices = "INSERT INTO devices (id, first_seen, last_seen, online, last_ts, last_seq, last_measurements, led_on)";

    /// <summary>A device already stored keeps its first sighting and takes everything else from the batch.</summary>
    protected const string DevicesConflictClause = """
        ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen, online = excluded.online, last_ts = excluded.last_ts,
            last_seq = excluded.last_seq, last_measurements = excluded.last_measurements, led_on = excluded.led_on
        """;

    public async Task<IReadOnlyList<StoredReading>> ReadingsAsync(string deviceId, DateTimeOffset from, DateTimeOffset to, int limit, CancellationToken cancellationToken)
    {
        var list = new List<StoredReading>();
        await foreach (var reading in QueryReadingsAsync(deviceId, from, to, limit, cancellationToken))
        {
            list.Add(reading);
        }
        return list;
    }

    public IAsyncEnumerable<StoredReading> StreamReadingsAsync(string deviceId, DateTimeOffset from, DateTimeOffset to, CancellationToken cancellationToken) =>
        QueryReadingsAsync(deviceId, from, to, null, cancellationToken);

    /// <summary>Readings of a device with <paramref name="from"/> ≤ ts &lt; <paramref name="to"/>, ordered by ts, seq (none first), arrived.</summary>
    protected abstract IAsyncEnumerable<StoredReading> QueryReadingsAsync(string deviceId, DateTimeOffset from, DateTimeOffset to, int? limit,
        CancellationToken cancellationToken);

    public abstract Task<long> CountReadingsAsync(string deviceId, DateTimeOffset from, DateTimeOffset to, CancellationToken cancellationToken);

    protected const long MinuteMs = 60_000;

    /// <summary>One bucket of a history query being summed up.</summary>
    protected sealed class Accumulator
    {
        public long Count;
        public readonly Dictionary<string, (long N, double Min, double Max, double Sum)> Values = new(StringComparer.Ordinal);

        public void Add(string name, long n, double min, double max, double sum)
        {
            Values[name] = Values.TryGetValue(name, out var v) ? (v.N + n, Math.Min(v.Min, min), Math.Max(v.Max, max), v.Sum + sum) : (n, min, max, sum);
        }
    }

    public async Task<IReadOnlyList<ReadingBucket>> BucketsAsync(string deviceId, DateTimeOffset from, DateTimeOffset to, TimeSpan bucket,
        IReadOnlyCollection<string> measurements, CancellationToken cancellationToken)
    {
        var bucketMs = Math.Max(1, (long)bucket.TotalMilliseconds);
        // Buckets start at whole multiples of their size (10:00:00, 10:00:10, ...), whatever the range's start.
        var fromMs = from.ToUnixTimeMilliseconds();
        var toMs = to.ToUnixTimeMilliseconds();
        var origin = fromMs - (((fromMs % bucketMs) + bucketMs) % bucketMs);
        var names = measurements.Distinct(StringComparer.Ordinal).ToList();
        var buckets = new SortedDictionary<long, Accumulator>();
        await using var connection = await OpenAsync(cancellationToken);
        // Buckets of whole minutes read the per-minute rollup for the minutes fully inside the range, and the raw
        // readings only for the partial minutes at its edges: a week of one-second data is 10,080 rollup rows.
        var firstMinute = (fromMs + MinuteMs - 1) / MinuteMs * MinuteMs;
        var lastMinute = toMs / MinuteMs * MinuteMs;
        if (bucketMs % MinuteMs == 0 && lastMinute > firstMinute)
        {
            await AddRawAsync(connection, deviceId, fromMs, firstMinute, origin, bucketMs, names, buckets, cancellationToken);
            await AddRollupAsync(connection, deviceId, firstMinute, lastMinute, origin, bucketMs, names, buckets, cancellationToken);
            await AddRawAsync(connection, deviceId, lastMinute, toMs, origin, bucketMs, names, buckets, cancellationToken);
        }
        else
        {
            await AddRawAsync(connection, deviceId, fromMs, toMs, origin, bucketMs, names, buckets, cancellationToken);
        }
        return buckets.Select(b => new ReadingBucket(DateTimeOffset.FromUnixTimeMilliseconds(origin + b.Key * bucketMs), b.Value.Count,
            b.Value.Values.ToDictionary(v => v.Key, v => new BucketStats(v.Value.Min, v.Value.Sum / v.Value.N, v.Value.Max), StringComparer.Ordinal))).ToList();
    }

    /// <summary>Adds the raw readings with <paramref name="fromMs"/> ≤ ts &lt; <paramref name="toMs"/> to bucket <c>(ts − origin) / bucketMs</c>.</summary>
    protected abstract Task AddRawAsync(DbConnection connection, string deviceId, long fromMs, long toMs, long origin, long bucketMs, List<string> names,
        SortedDictionary<long, Accumulator> buckets, CancellationToken cancellationToken);

    async Task AddRollupAsync(DbConnection connection, string deviceId, long fromMs, long toMs, long origin, long bucketMs, List<string> names,
        SortedDictionary<long, Accumulator> buckets, CancellationToken cancellationToken)
    {
        await using var command = connection.CreateCommand();
        var parameters = new List<string>();
        for (var i = 0; i < names.Count; i++)
        {
            parameters.Add($"@n{i}");
            Add(command, $"@n{i}", names[i]);
        }
        command.CommandText = $"""
            SELECT (minute - @origin) / @bucket AS b, name, SUM(n), MIN(min_value), MAX(max_value), SUM(sum_value)
            FROM readings_minute WHERE device_id = @device AND minute >= @from AND minute < @to AND name IN ({string.Join(", ", parameters)})
            GROUP BY b, name
            """;
        AddBucketParameters(command, deviceId, fromMs, toMs, bucketMs, origin);
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        var counts = new Dictionary<long, long>();
        while (await reader.ReadAsync(cancellationToken))
        {
            var b = reader.GetInt64(0);
            var acc = Bucket(buckets, b);
            var n = Convert.ToInt64(reader.GetValue(2), System.Globalization.CultureInfo.InvariantCulture);
            acc.Add(reader.GetString(1), n, Number(reader, 3), Number(reader, 4), Number(reader, 5));
            // The rollup counts per measurement; a bucket's reading count is that of its most frequent one.
            counts[b] = Math.Max(counts.GetValueOrDefault(b), n);
        }
        foreach (var (b, n) in counts)
        {
            buckets[b].Count += n;
        }
    }

    /// <summary>The parameters of a bucket query: <c>@device</c>, <c>@from</c>, <c>@to</c>, <c>@bucket</c>, <c>@origin</c>.</summary>
    protected static void AddBucketParameters(DbCommand command, string deviceId, long fromMs, long toMs, long bucketMs, long origin)
    {
        Add(command, "@device", deviceId);
        Add(command, "@from", fromMs);
        Add(command, "@to", toMs);
        Add(command, "@bucket", bucketMs);
        Add(command, "@origin", origin);
    }

    /// <summary>Bucket <paramref name="b"/>, added when it is the first reading of it.</summary>
    protected static Accumulator Bucket(SortedDictionary<long, Accumulator> buckets, long b)
    {
        if (!buckets.TryGetValue(b, out var acc))
        {
            buckets[b] = acc = new Accumulator();
        }
        return acc;
    }

    protected static double Number(DbDataReader reader, int column) =>
        Convert.ToDouble(reader.GetValue(column), System.Globalization.CultureInfo.InvariantCulture);

    /// <summary>Adds newly inserted readings (never a skipped duplicate) to the per-minute rollup, in the same transaction.</summary>
    protected async Task AddToRollupAsync(DbConnection connection, DbTransaction transaction, IEnumerable<(string DeviceId, long Ts, Measurements Measurements)> inserted,
        CancellationToken cancellationToken)
    {
        var sums = RentSums();
        foreach (var (device, ts, measurements) in inserted)
        {
            sums.Add(device, ts, measurements);
        }
        await AddToRollupAsync(connection, transaction, sums, cancellationToken);
    }

    /// <summary>Adds readings summed up by the caller to the per-minute rollup, in the same transaction.</summary>
    /// <remarks>Takes <paramref name="sums"/> back for the next batch (see <see cref="RentSums"/>).</remarks>
    protected async Task AddToRollupAsync(DbConnection connection, DbTransaction transaction, MinuteSums sums, CancellationToken cancellationToken)
    {
        var rows = sums.Rows();
        if (rows.Count > 0)
        {
            await UpsertRollupAsync(connection, transaction, rows, cancellationToken);
        }
        sums.Clear();
        _spareSums = sums;
    }

    MinuteSums? _spareSums;

    /// <summary>
    /// The sums of the last batch, emptied, or new ones. A batch from thousands of devices needs tables larger than
    /// 85 KB, which .NET allocates on its large object heap; new ones for every batch (five a second) made the garbage
    /// collector run full collections of the whole heap every few seconds
    /// (docs/benchmarks/gc-and-jit.md#large-objects-per-batch).
    /// </summary>
    protected MinuteSums RentSums() => Interlocked.Exchange(ref _spareSums, null) ?? new MinuteSums();

    /// <summary>The readings of a batch summed up per device, minute and measurement, for <c>readings_minute</c>.</summary>
    /// <remarks>
    /// One flat table of plain sums: a batch from a thousand devices has a thousand (device, minute) pairs, and a table
    /// and sum objects for each of them were as many allocations as the readings' own.
    /// </remarks>
    protected sealed class MinuteSums
    {
        readonly Dictionary<(string Device, long Minute, string Name), Sum> _sums = [];
        readonly List<MinuteRollup> _rows = [];

        /// <summary>Empties the sums and rows and keeps their capacity.</summary>
        public void Clear()
        {
            _sums.Clear();
            _rows.Clear();
        }

        public void Add(string device, long ts, Measurements measurements)
        {
            var minute = (ts >= 0 ? ts : ts - MinuteMs + 1) / MinuteMs * MinuteMs;
            foreach (var (name, value) in measurements)
            {
                ref var sum = ref CollectionsMarshal.GetValueRefOrAddDefault(_sums, (device, minute, name), out var exists);
                sum = exists ? sum.With(value) : new Sum(1, value, value, value);
            }
        }

        /// <summary>
        /// The rows in one order for every writer: two server processes upserting the same minutes lock their rows
        /// in the same order, so they wait for each other instead of deadlocking.
        /// </summary>
        public IReadOnlyList<MinuteRollup> Rows()
        {
            var rows = _rows;
            rows.Clear();
            foreach (var ((device, minute, name), sum) in _sums)
            {
                rows.Add(new MinuteRollup(device, minute, name, sum.N, sum.Min, sum.Max, sum.Total));
            }
            rows.Sort(static (a, b) =>
            {
                var byDevice = string.CompareOrdinal(a.DeviceId, b.DeviceId);
                if (byDevice != 0)
                {
                    return byDevice;
                }
                var byMinute = a.Minute.CompareTo(b.Minute);
                return byMinute != 0 ? byMinute : string.CompareOrdinal(a.Name, b.Name);
            });
            return rows;
        }

        readonly record struct Sum(long N, double Min, double Max, double Total)
        {
            public Sum With(double value) => new(N + 1, Math.Min(Min, value), Math.Max(Max, value), Total + value);
        }
    }

    /// <summary>One (device, minute, measurement) of a batch, summed up, to be added to <c>readings_minute</c>.</summary>
    protected readonly record struct MinuteRollup(string DeviceId, long Minute, string Name, long N, double Min, double Max, double Sum);

    /// <summary>SQL that adds an incoming row (<c>excluded</c>) to a <c>readings_minute</c> row already there.</summary>
    protected string RollupConflictClause => $"""
        ON CONFLICT (device_id, minute, name) DO UPDATE SET n = readings_minute.n + excluded.n,
            min_value = {Least}(readings_minute.min_value, excluded.min_value), max_value = {Greatest}(readings_minute.max_value, excluded.max_value),
            sum_value = readings_minute.sum_value + excluded.sum_value
        """;

    /// <summary>Adds rows to <c>readings_minute</c>, each (device, minute, name) at most once.</summary>
    protected abstract Task UpsertRollupAsync(DbConnection connection, DbTransaction transaction, IReadOnlyList<MinuteRollup> rows, CancellationToken cancellationToken);

    /// <summary>The start of every engine's upsert into <c>readings_minute</c>: its columns, in the order the values follow.</summary>
    protected const string InsertRollup = "INSERT INTO readings_minute (device_id, minute, name, n, min_value, max_value, sum_value)";

    /// <summary>The two-argument minimum and maximum functions of the engine.</summary>
    protected abstract string Least { get; }

    protected abstract string Greatest { get; }

    public async Task<IReadOnlyList<EpochNumbering>> NumberingAsync(string deviceId, CancellationToken cancellationToken)
    {
        await using var connection = await OpenAsync(cancellationToken);
        await using var command = connection.CreateCommand();
        command.CommandText = NumberingSql;
        Add(command, "@device", deviceId);
        var list = new List<EpochNumbering>();
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            list.Add(new EpochNumbering(reader.GetInt64(0), reader.GetInt64(1), reader.GetInt64(2),
                Convert.ToInt64(reader.GetValue(3), System.Globalization.CultureInfo.InvariantCulture)));
        }
        return list;
    }

    public async Task<long> MissingAsync(CancellationToken cancellationToken)
    {
        await using var connection = await OpenAsync(cancellationToken);
        await using var command = connection.CreateCommand();
        command.CommandText = MissingSql;
        // PostgreSQL sums bigints into a numeric, SQLite into an integer.
        return Convert.ToInt64(await command.ExecuteScalarAsync(cancellationToken), System.Globalization.CultureInfo.InvariantCulture);
    }

    /// <summary>The table that holds the stored seqs.</summary>
    protected abstract string SeqsTable { get; }

    /// <summary>Per epoch of <c>@device</c>, by lowest seq: epoch, lowest and highest stored seq, and how many are stored.</summary>
    protected virtual string NumberingSql =>
        $"SELECT epoch, MIN(seq), MAX(seq), COUNT(*) FROM {SeqsTable} WHERE device_id = @device AND seq IS NOT NULL GROUP BY epoch ORDER BY MIN(seq), epoch";

    /// <summary>The seqs missing between the lowest and highest stored seq, summed over every device and epoch.</summary>
    protected virtual string MissingSql =>
        $"SELECT COALESCE(SUM(hi - lo + 1 - n), 0) FROM (SELECT MIN(seq) AS lo, MAX(seq) AS hi, COUNT(*) AS n FROM {SeqsTable} WHERE seq IS NOT NULL GROUP BY device_id, epoch) AS numbering";

    public async Task<IReadOnlyList<CommandRecord>> CommandsAsync(string deviceId, int limit, CancellationToken cancellationToken)
    {
        await using var connection = await OpenAsync(cancellationToken);
        await using var command = connection.CreateCommand();
        command.CommandText = "SELECT id, led_on, source, status, created, updated, expires, switch_name FROM commands WHERE device_id = @device ORDER BY created DESC, id DESC LIMIT @limit";
        Add(command, "@device", deviceId);
        Add(command, "@limit", limit);
        var list = new List<CommandRecord>();
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            list.Add(new CommandRecord(reader.GetString(0), deviceId, reader.GetBoolean(1), reader.GetString(2), reader.GetString(3),
                DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(4)), DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(5)),
                reader.IsDBNull(6) ? null : DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(6)))
            {
                Switch = reader.GetString(7),
            });
        }
        return list;
    }

    public async Task<IReadOnlyList<DeviceRecord>> DevicesAsync(CancellationToken cancellationToken)
    {
        await using var connection = await OpenAsync(cancellationToken);
        await using var command = connection.CreateCommand();
        command.CommandText = "SELECT id, first_seen, last_seen, online, last_ts, last_seq, last_measurements, led_on FROM devices ORDER BY id";
        var list = new List<DeviceRecord>();
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            var id = reader.GetString(0);
            StoredReading? last = reader.IsDBNull(4) ? null : new StoredReading(id,
                DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(4)), DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(2)),
                reader.IsDBNull(5) ? null : reader.GetInt64(5), MeasurementsJson.Read(reader.GetString(6)));
            list.Add(new DeviceRecord(id, DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(1)), DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(2)),
                reader.IsDBNull(3) ? null : reader.GetBoolean(3), last, reader.IsDBNull(7) ? null : reader.GetBoolean(7)));
        }
        return list;
    }

    public async Task<long> DeleteOlderThanAsync(DateTimeOffset cutoff, CancellationToken cancellationToken)
    {
        await using var connection = await OpenAsync(cancellationToken);
        await using var command = connection.CreateCommand();
        var deleted = await DeleteReadingsOlderThanAsync(connection, cutoff.ToUnixTimeMilliseconds(), cancellationToken);
        command.CommandText = "DELETE FROM readings_minute WHERE minute < @cutoff - 60000";
        Add(command, "@cutoff", cutoff.ToUnixTimeMilliseconds());
        await command.ExecuteNonQueryAsync(cancellationToken);
        command.CommandText = "DELETE FROM commands WHERE created < @cutoff";
        await command.ExecuteNonQueryAsync(cancellationToken);
        return deleted;
    }

    /// <summary>Deletes the readings taken before <paramref name="cutoffMs"/>; returns how many.</summary>
    protected abstract Task<long> DeleteReadingsOlderThanAsync(DbConnection connection, long cutoffMs, CancellationToken cancellationToken);

    protected static DbParameter Add(DbCommand command, string name, object? value = null)
    {
        var parameter = command.CreateParameter();
        parameter.ParameterName = name;
        parameter.Value = value ?? DBNull.Value;
        command.Parameters.Add(parameter);
        return parameter;
    }

    public virtual ValueTask DisposeAsync()
    {
        GC.SuppressFinalize(this);
        return ValueTask.CompletedTask;
    }
}
