using System.Data.Common;
using System.Runtime.CompilerServices;
using Microsoft.Data.Sqlite;
using SQLitePCL;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Nightlight.Server.Storage.Sqlite;

/// <summary>
/// The default store: one SQLite file in the data directory, in WAL mode so the history API reads while the writer
/// writes. <c>synchronous=NORMAL</c>: a power cut can lose the last batch, never corrupt the file.
/// </summary>
public sealed class SqliteTelemetryStore(string path, ILogger? logger = null) : SqlTelemetryStore
{
    readonly ILogger _logger = logger ?? NullLogger.Instance;

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
        // A device's readings a few seconds at a time, in one row (see ReadingBlock): the index then takes one entry per
        // block, not per reading. From 1,000 devices at 20,000 readings/s, an index entry per reading was most of the
        // writer's CPU and 40 MB/s of WAL (docs/benchmarks/storage.md#reading-blocks).
        """
        CREATE TABLE IF NOT EXISTS reading_blocks (
            device_id TEXT NOT NULL, first_ts INTEGER NOT NULL, last_ts INTEGER NOT NULL, n INTEGER NOT NULL, data BLOB NOT NULL)
        """,
        "CREATE INDEX IF NOT EXISTS reading_blocks_device_first ON reading_blocks (device_id, first_ts)",
        // Only readings with a seq can be redelivered copies of each other, so only their seqs are kept, as runs without
        // a gap (see SeqRuns): a lesson device's readings (no seq) skip it. A seq is unique within its device's epoch (0
        // when the device sent none).
        SeqRunsTable,
        """
        CREATE TABLE IF NOT EXISTS readings_minute (
            device_id TEXT NOT NULL, minute INTEGER NOT NULL, name TEXT NOT NULL, n INTEGER NOT NULL,
            min_value REAL NOT NULL, max_value REAL NOT NULL, sum_value REAL NOT NULL, PRIMARY KEY (device_id, minute, name))
        """,
        """
        CREATE TABLE IF NOT EXISTS commands (
            id TEXT PRIMARY KEY, device_id TEXT NOT NULL, led_on INTEGER NOT NULL, source TEXT NOT NULL, status TEXT NOT NULL,
            created INTEGER NOT NULL, updated INTEGER NOT NULL, expires INTEGER NULL, switch_name TEXT NOT NULL DEFAULT 'led_on')
        """,
        "CREATE INDEX IF NOT EXISTS commands_device_created ON commands (device_id, created)",
        """
        CREATE TABLE IF NOT EXISTS devices (
            id TEXT PRIMARY KEY, first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL, online INTEGER NULL,
            last_ts INTEGER NULL, last_seq INTEGER NULL, last_measurements TEXT NULL, led_on INTEGER NULL)
        """,
    ];

    /// <summary>Earlier versions' table of stored seqs, a row per reading; <see cref="SeqsIntoRunsAsync"/> turns it into runs.</summary>
    const string ReadingSeqsTable = """
        CREATE TABLE IF NOT EXISTS reading_seqs (
            device_id TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL, ts INTEGER NOT NULL,
            PRIMARY KEY (device_id, epoch, seq)) WITHOUT ROWID
        """;

    /// <summary>Runs of stored seqs: every seq from <c>lo</c> to <c>hi</c> of the device's epoch is stored; <c>last_ts</c> is the latest reading time among them.</summary>
    const string SeqRunsTable = """
        CREATE TABLE IF NOT EXISTS seq_runs (
            device_id TEXT NOT NULL, epoch INTEGER NOT NULL, lo INTEGER NOT NULL, hi INTEGER NOT NULL, last_ts INTEGER NOT NULL,
            PRIMARY KEY (device_id, epoch, lo)) WITHOUT ROWID
        """;

    public override async Task InitializeAsync(CancellationToken cancellationToken)
    {
        // A new database is readable by its owner only (0600), whatever the umask; SQLite gives its -wal and -shm files
        // the same mode.
        if (!OperatingSystem.IsWindows() && !File.Exists(path))
        {
            using var created = new FileStream(path, new FileStreamOptions
            {
                Mode = FileMode.CreateNew, Access = FileAccess.Write, UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
            });
        }
        await base.InitializeAsync(cancellationToken);
        await AddEpochsAsync(cancellationToken);
        await AddCommandSwitchAsync(cancellationToken);
        await MoveRowsIntoBlocksAsync(cancellationToken);
        await SeqsIntoRunsAsync(cancellationToken);
    }

    /// <summary>
    /// Versions before runs kept a row per stored seq in <c>reading_seqs</c>: its seqs become runs in <c>seq_runs</c>, and
    /// the table goes, in one transaction, once.
    /// </summary>
    async Task SeqsIntoRunsAsync(CancellationToken cancellationToken)
    {
        await using var connection = (SqliteConnection)await OpenForWriteAsync(cancellationToken);
        await using var transaction = (SqliteTransaction)await connection.BeginTransactionAsync(cancellationToken);
        await using var command = connection.CreateCommand();
        command.Transaction = transaction;
        command.CommandText = "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'reading_seqs'";
        if (Convert.ToInt64(await command.ExecuteScalarAsync(cancellationToken), System.Globalization.CultureInfo.InvariantCulture) == 0)
        {
            return;
        }
        // Seqs of one run, in order, lie the same distance from their row number: that distance names the run.
        command.CommandText = """
            INSERT INTO seq_runs (device_id, epoch, lo, hi, last_ts)
            SELECT device_id, epoch, MIN(seq), MAX(seq), MAX(ts) FROM (
                SELECT device_id, epoch, seq, ts, seq - ROW_NUMBER() OVER (PARTITION BY device_id, epoch ORDER BY seq) AS run FROM reading_seqs)
            GROUP BY device_id, epoch, run
            """;
        var runs = await command.ExecuteNonQueryAsync(cancellationToken);
        command.CommandText = "DROP TABLE reading_seqs";
        await command.ExecuteNonQueryAsync(cancellationToken);
        await transaction.CommitAsync(cancellationToken);
        _logger.LogInformation("Stored seqs of an earlier version are now {Runs} runs", runs);
    }

    /// <summary>
    /// Versions before switches stored only LED commands: their <c>commands</c> table gains <c>switch_name</c>, every
    /// row <c>led_on</c>. SQLite has no <c>ADD COLUMN IF NOT EXISTS</c>.
    /// </summary>
    async Task AddCommandSwitchAsync(CancellationToken cancellationToken)
    {
        await using var connection = (SqliteConnection)await OpenForWriteAsync(cancellationToken);
        await using var command = connection.CreateCommand();
        command.CommandText = "SELECT COUNT(*) FROM pragma_table_info('commands') WHERE name = 'switch_name'";
        if (Convert.ToInt64(await command.ExecuteScalarAsync(cancellationToken), System.Globalization.CultureInfo.InvariantCulture) == 0)
        {
            command.CommandText = "ALTER TABLE commands ADD COLUMN switch_name TEXT NOT NULL DEFAULT 'led_on'";
            await command.ExecuteNonQueryAsync(cancellationToken);
        }
    }

    /// <summary>SQLite's <c>quick_check</c> (pages and records, not indexes' contents): its first problems, or null.</summary>
    public override async Task<string?> CheckIntegrityAsync(CancellationToken cancellationToken)
    {
        await using var connection = await OpenAsync(cancellationToken);
        await using var check = connection.CreateCommand();
        check.CommandText = "PRAGMA quick_check(3)";
        var problems = new List<string>();
        try
        {
            await using var reader = await check.ExecuteReaderAsync(cancellationToken);
            while (await reader.ReadAsync(cancellationToken))
            {
                problems.Add(reader.GetString(0));
            }
        }
        catch (SqliteException e)
        {
            problems.Add(e.Message);
        }
        return problems is ["ok"] ? null : string.Join("; ", problems);
    }

    /// <summary>
    /// Versions before epochs kept a seq unique per device: their <c>reading_seqs</c> becomes one keyed by (device,
    /// epoch, seq), its rows epoch 0, in one transaction, once. SQLite cannot change a primary key in place.
    /// </summary>
    async Task AddEpochsAsync(CancellationToken cancellationToken)
    {
        await using var connection = (SqliteConnection)await OpenForWriteAsync(cancellationToken);
        await using var transaction = (SqliteTransaction)await connection.BeginTransactionAsync(cancellationToken);
        await using var command = connection.CreateCommand();
        command.Transaction = transaction;
        // No such table (a database made with runs), or one with epochs already: nothing to do.
        command.CommandText = "SELECT COUNT(*) FROM pragma_table_info('reading_seqs') WHERE name IN ('device_id', 'epoch')";
        if (Convert.ToInt64(await command.ExecuteScalarAsync(cancellationToken), System.Globalization.CultureInfo.InvariantCulture) != 1)
        {
            return;
        }
        command.CommandText = "ALTER TABLE reading_seqs RENAME TO reading_seqs_before_epochs";
        await command.ExecuteNonQueryAsync(cancellationToken);
        command.CommandText = ReadingSeqsTable;
        await command.ExecuteNonQueryAsync(cancellationToken);
        command.CommandText = "INSERT INTO reading_seqs (device_id, epoch, seq, ts) SELECT device_id, 0, seq, ts FROM reading_seqs_before_epochs";
        var moved = await command.ExecuteNonQueryAsync(cancellationToken);
        command.CommandText = "DROP TABLE reading_seqs_before_epochs";
        await command.ExecuteNonQueryAsync(cancellationToken);
        await transaction.CommitAsync(cancellationToken);
        _logger.LogInformation("Stored seqs now count per epoch: {Count} seqs of an earlier version are epoch 0", moved);
    }

    /// <summary>
    /// Versions before blocks kept a row per reading in <c>readings</c>: its readings move into blocks, their seqs into
    /// <c>reading_seqs</c>, and the table goes, in one transaction, once.
    /// </summary>
    async Task MoveRowsIntoBlocksAsync(CancellationToken cancellationToken)
    {
        await using var connection = (SqliteConnection)await OpenForWriteAsync(cancellationToken);
        await using var transaction = (SqliteTransaction)await connection.BeginTransactionAsync(cancellationToken);
        await using var command = connection.CreateCommand();
        command.Transaction = transaction;
        command.CommandText = "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'readings'";
        if (Convert.ToInt64(await command.ExecuteScalarAsync(cancellationToken), System.Globalization.CultureInfo.InvariantCulture) == 0)
        {
            return;
        }
        command.CommandText = "SELECT COUNT(*) FROM readings";
        var total = Convert.ToInt64(await command.ExecuteScalarAsync(cancellationToken), System.Globalization.CultureInfo.InvariantCulture);
        _logger.LogInformation("Moving {Count} readings from an earlier version's table into blocks, once", total);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        using var statements = new BlockStatements(connection);
        command.CommandText = ReadingSeqsTable;
        await command.ExecuteNonQueryAsync(cancellationToken);
        using var addSeq = new SqliteStatement(connection, "INSERT INTO reading_seqs (device_id, epoch, seq, ts) VALUES (?1, 0, ?2, ?3) ON CONFLICT DO NOTHING");
        var block = new ReadingBlock();
        string? device = null;
        void Save()
        {
            if (block.Count > 0)
            {
                statements.Insert(device!, block);
                block.Clear();
            }
        }
        long moved = 0;
        command.CommandText = "SELECT device_id, ts, arrived, seq, measurements FROM readings ORDER BY device_id, ts, rowid";
        await using (var reader = await command.ExecuteReaderAsync(cancellationToken))
        {
            while (await reader.ReadAsync(cancellationToken))
            {
                var id = reader.GetString(0);
                var ts = reader.GetInt64(1);
                long? seq = reader.IsDBNull(3) ? null : reader.GetInt64(3);
                if (id != device)
                {
                    Save();
                    device = id;
                }
                var measurements = MeasurementsJson.Read(reader.GetString(4));
                if (!block.TryAdd(ts, reader.GetInt64(2), seq, 0, measurements))
                {
                    Save();
                    block.Add(ts, reader.GetInt64(2), seq, 0, measurements);
                }
                if (seq is { } s)
                {
                    // Into the earlier table, which SeqsIntoRunsAsync then turns into runs.
                    addSeq.Bind(1, id);
                    addSeq.Bind(2, s);
                    addSeq.Bind(3, ts);
                    addSeq.Execute();
                }
                if (++moved % 1_000_000 == 0)
                {
                    _logger.LogInformation("Moved {Moved} of {Count} readings", moved, total);
                }
            }
        }
        Save();
        command.CommandText = "DROP TABLE readings";
        await command.ExecuteNonQueryAsync(cancellationToken);
        await transaction.CommitAsync(cancellationToken);
        _logger.LogInformation("Moved {Count} readings into blocks in {Seconds:F1} s", moved, clock.Elapsed.TotalSeconds);
    }

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
    /// from a thousand devices dirties a page of blocks or index for each of them: with SQLite's defaults (2 MB of cache,
    /// a checkpoint every 1,000 pages) nearly every batch read those pages back and copied them into the database
    /// again, and the writer spent more time in system calls than in SQLite
    /// (docs/benchmarks/storage.md#sqlite-writer-cache). The cache is a ceiling per connection, filled only as pages
    /// are used; readers keep the defaults.
    /// </summary>
    protected override async Task<DbConnection> OpenForWriteAsync(CancellationToken cancellationToken)
    {
        var connection = await OpenAsync(cancellationToken);
        await using var pragma = connection.CreateCommand();
        pragma.CommandText = "PRAGMA cache_size = -65536; PRAGMA wal_autocheckpoint = 10000; PRAGMA mmap_size = 268435456";
        await pragma.ExecuteNonQueryAsync(cancellationToken);
        return connection;
    }

    protected override string SeqsTable => "seq_runs";

    protected override string NumberingSql =>
        "SELECT epoch, MIN(lo), MAX(hi), SUM(hi - lo + 1) FROM seq_runs WHERE device_id = @device GROUP BY epoch ORDER BY MIN(lo), epoch";

    protected override string MissingSql =>
        "SELECT COALESCE(SUM(hi - lo + 1 - n), 0) FROM (SELECT MIN(lo) AS lo, MAX(hi) AS hi, SUM(hi - lo + 1) AS n FROM seq_runs GROUP BY device_id, epoch) AS numbering";

    protected override string Least => "MIN";

    protected override string Greatest => "MAX";

    // The batch's rows go through SqliteStatement (bound by position, prepared once per batch): see there why.

    /// <summary>A device's newest block, kept between batches so the next ones append to it.</summary>
    sealed class OpenBlock(string deviceId)
    {
        public readonly string DeviceId = deviceId;

        public readonly ReadingBlock Block = new();

        /// <summary>Its row, or 0 before it has one.</summary>
        public long RowId;

        /// <summary>Readings its row held after the last batch: a row that no longer holds as many was changed by retention.</summary>
        public int Stored;

        /// <summary>The readings of this batch it took, as indexes into the batch, until it is saved.</summary>
        public readonly List<int> Appended = [];

        public long LastBatch;
    }

    readonly Dictionary<string, OpenBlock> _open = new(StringComparer.Ordinal);
    readonly List<OpenBlock> _touched = [];
    long _batch;

    /// <summary>Blocks untouched for this many batches (a minute at the writer's five a second) are no longer kept open.</summary>
    const int OpenForBatches = 300;

    protected override async Task<int> InsertReadingsAsync(DbConnection connection, DbTransaction transaction, IReadOnlyList<StoredReading> readings, CancellationToken cancellationToken)
    {
        var sqlite = (SqliteConnection)connection;
        var sums = RentSums();
        var inserted = 0;
        var batch = ++_batch;
        _touched.Clear();
        ForgetRunsChangedElsewhere(sqlite);
        using (var blocks = new BlockStatements(sqlite))
        using (var runs = new SeqRuns.Statements(sqlite))
        {
            // In arrival order: each reading goes to its device's open block, and every block it touched is saved once
            // at the end. (Ordering the batch by device first cost a third of this loop's time.)
            for (var at = 0; at < readings.Count; at++)
            {
                cancellationToken.ThrowIfCancellationRequested();
                var r = readings[at];
                var ts = r.Ts.ToUnixTimeMilliseconds();
                if (r.Seq is { } seq && !_seqRuns.TryAdd(runs, r.DeviceId, r.Epoch, seq, ts, batch))
                {
                    continue;
                }
                var open = Open(r.DeviceId, batch);
                var arrived = r.Arrived.ToUnixTimeMilliseconds();
                if (!open.Block.TryAdd(ts, arrived, r.Seq, r.Epoch, r.Measurements))
                {
                    // Full, or the reading lies too far from the block's times: the block is done, a new one begins.
                    blocks.Save(open, readings);
                    open.Block.Clear();
                    open.RowId = 0;
                    open.Stored = 0;
                    open.Block.Add(ts, arrived, r.Seq, r.Epoch, r.Measurements);
                }
                open.Appended.Add(at);
                inserted++;
                sums.Add(r.DeviceId, ts, r.Measurements);
            }
            foreach (var open in _touched)
            {
                blocks.Save(open, readings);
            }
            _seqRuns.SaveAll(runs, batch);
        }
        if (batch % OpenForBatches == 0)
        {
            foreach (var (id, idle) in _open)
            {
                if (idle.LastBatch <= batch - OpenForBatches)
                {
                    _open.Remove(id);
                }
            }
        }
        await AddToRollupAsync(connection, transaction, sums, cancellationToken);
        return inserted;
    }

    readonly SeqRuns _seqRuns = new();
    sqlite3? _writerHandle;
    long _writerDataVersion;

    /// <summary>
    /// The runs kept in memory describe the table as this writer left it: when another connection has committed since
    /// (retention, or a second process on the same file), they are read again from the table. SQLite's
    /// <c>data_version</c> changes for exactly that; it is per connection, so another pooled connection also starts over.
    /// Retention run earlier on this same connection goes unseen, which is harmless: it only deletes runs, and a kept run
    /// whose row it deleted is written again, still covering only seqs that were stored.
    /// </summary>
    void ForgetRunsChangedElsewhere(SqliteConnection connection)
    {
        using var version = new SqliteStatement(connection, "PRAGMA data_version");
        version.TryReadRow(static s => s.Int64(0), out var dataVersion);
        if (!ReferenceEquals(connection.Handle, _writerHandle) || dataVersion != _writerDataVersion)
        {
            _seqRuns.Clear();
            (_writerHandle, _writerDataVersion) = (connection.Handle, dataVersion);
        }
    }

    OpenBlock Open(string deviceId, long batch)
    {
        if (!_open.TryGetValue(deviceId, out var open))
        {
            _open[deviceId] = open = new OpenBlock(deviceId);
        }
        if (open.LastBatch != batch)
        {
            open.LastBatch = batch;
            open.Appended.Clear();
            _touched.Add(open);
        }
        return open;
    }

    /// <summary>The open blocks describe rows of a transaction that rolled back: forget them, the next batch starts new ones.</summary>
    protected override void WriteFailed()
    {
        _open.Clear();
        _seqRuns.Clear();
        // A failed batch (a full disk) can leave the WAL grown to fill the disk; emptied into the database file now,
        // the space a user frees is there for the next try instead of being taken by the WAL again.
        try
        {
            using var connection = new SqliteConnection(_connectionString);
            connection.Open();
            using var checkpoint = connection.CreateCommand();
            checkpoint.CommandText = "PRAGMA wal_checkpoint(TRUNCATE)";
            checkpoint.ExecuteNonQuery();
        }
        catch (SqliteException e)
        {
            _logger.LogDebug("Checkpoint after a failed write did not complete: {Error}", e.Message);
        }
    }

    /// <summary>The statements that write block rows.</summary>
    sealed class BlockStatements(SqliteConnection connection) : IDisposable
    {
        readonly SqliteStatement _insert = new(connection, "INSERT INTO reading_blocks (device_id, first_ts, last_ts, n, data) VALUES (?1, ?2, ?3, ?4, ?5)");
        readonly SqliteStatement _update = new(connection, "UPDATE reading_blocks SET first_ts = ?1, last_ts = ?2, n = ?3, data = ?4 WHERE rowid = ?5 AND n = ?6");

        /// <summary>Inserts <paramref name="block"/> as a new row; returns its rowid.</summary>
        public long Insert(string deviceId, ReadingBlock block)
        {
            _insert.Bind(1, deviceId);
            _insert.Bind(2, block.FirstTs);
            _insert.Bind(3, block.LastTs);
            _insert.Bind(4, (long)block.Count);
            _insert.BindBlob(5, block.Data);
            _insert.Execute();
            return _insert.LastInsertRowId;
        }

        /// <summary>
        /// Saves <paramref name="open"/>, whose readings of this batch are its <see cref="OpenBlock.Appended"/> (indexes
        /// into <paramref name="readings"/>), and empties that list. When its row is gone or retention rewrote it, the
        /// block starts again from this batch's readings only: the ones before are stored as retention left them.
        /// </summary>
        public void Save(OpenBlock open, IReadOnlyList<StoredReading> readings)
        {
            var appended = open.Appended;
            if (appended.Count == 0)
            {
                return;
            }
            var block = open.Block;
            if (open.RowId != 0)
            {
                _update.Bind(1, block.FirstTs);
                _update.Bind(2, block.LastTs);
                _update.Bind(3, (long)block.Count);
                _update.BindBlob(4, block.Data);
                _update.Bind(5, open.RowId);
                _update.Bind(6, (long)open.Stored);
                if (_update.Execute() == 1)
                {
                    open.Stored = block.Count;
                    appended.Clear();
                    return;
                }
                block.Clear();
                foreach (var at in appended)
                {
                    block.Add(readings[at]);
                }
            }
            open.RowId = Insert(open.DeviceId, block);
            open.Stored = block.Count;
            appended.Clear();
        }

        public void Dispose()
        {
            _insert.Dispose();
            _update.Dispose();
        }
    }

    /// <summary>
    /// Runs <paramref name="command"/> (the caller disposes it) over the blocks that can hold readings of a device with
    /// <paramref name="fromMs"/> ≤ ts &lt; <paramref name="toMs"/>, by first time.
    /// </summary>
    static async Task<DbDataReader> BlocksAsync(DbCommand command, string columns, string deviceId, long fromMs, long toMs, CancellationToken cancellationToken)
    {
        command.CommandText = $"SELECT {columns} FROM reading_blocks WHERE device_id = @device AND first_ts >= @low AND first_ts < @to ORDER BY first_ts, rowid";
        Add(command, "@device", deviceId);
        Add(command, "@low", fromMs - ReadingBlock.MaxSpanMs);
        Add(command, "@to", toMs);
        return await command.ExecuteReaderAsync(System.Data.CommandBehavior.Default, cancellationToken);
    }

    /// <summary>A reading's place in a query's answer: by time, then seq (none first, as SQL sorts nulls), then arrival, then as stored.</summary>
    readonly record struct ReadingOrder(long Ts, long Seq, long Arrived, long Ordinal) : IComparable<ReadingOrder>
    {
        public int CompareTo(ReadingOrder other)
        {
            var c = Ts.CompareTo(other.Ts);
            c = c != 0 ? c : Seq.CompareTo(other.Seq);
            c = c != 0 ? c : Arrived.CompareTo(other.Arrived);
            return c != 0 ? c : Ordinal.CompareTo(other.Ordinal);
        }
    }

    protected override async IAsyncEnumerable<StoredReading> QueryReadingsAsync(string deviceId, DateTimeOffset from, DateTimeOffset to, int? limit,
        [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        var fromMs = from.ToUnixTimeMilliseconds();
        var toMs = to.ToUnixTimeMilliseconds();
        if (limit <= 0 || toMs <= fromMs)
        {
            yield break;
        }
        await using var connection = await OpenAsync(cancellationToken);
        await using var command = connection.CreateCommand();
        await using var reader = await BlocksAsync(command, "first_ts, data", deviceId, fromMs, toMs, cancellationToken);
        // Blocks come by their first time, and blocks of readings sent late may overlap: a reading is due once no block
        // still to come can hold an earlier one, that is once the next block begins after it.
        var due = new PriorityQueue<StoredReading, ReadingOrder>();
        var block = new ReadingBlock.Reader();
        long ordinal = 0;
        var given = 0;
        while (await reader.ReadAsync(cancellationToken))
        {
            var firstTs = reader.GetInt64(0);
            while (due.TryPeek(out _, out var next) && next.Ts < firstTs)
            {
                yield return due.Dequeue();
                if (++given == limit)
                {
                    yield break;
                }
            }
            block.Reset(deviceId, reader.GetFieldValue<byte[]>(1));
            while (block.MoveNext())
            {
                if (block.Ts >= fromMs && block.Ts < toMs)
                {
                    due.Enqueue(block.Reading(), new ReadingOrder(block.Ts, block.Seq ?? long.MinValue, block.Arrived, ordinal++));
                }
            }
        }
        while (due.TryDequeue(out var r, out _))
        {
            yield return r;
            if (++given == limit)
            {
                yield break;
            }
        }
    }

    public override async Task<long> CountReadingsAsync(string deviceId, DateTimeOffset from, DateTimeOffset to, CancellationToken cancellationToken)
    {
        var fromMs = from.ToUnixTimeMilliseconds();
        var toMs = to.ToUnixTimeMilliseconds();
        await using var connection = await OpenAsync(cancellationToken);
        await using var command = connection.CreateCommand();
        await using var reader = await BlocksAsync(command, "first_ts, last_ts, n, data", deviceId, fromMs, toMs, cancellationToken);
        var block = new ReadingBlock.Reader();
        long count = 0;
        while (await reader.ReadAsync(cancellationToken))
        {
            if (reader.GetInt64(0) >= fromMs && reader.GetInt64(1) < toMs)
            {
                count += reader.GetInt64(2);
                continue;
            }
            block.Reset(deviceId, reader.GetFieldValue<byte[]>(3));
            while (block.MoveNext())
            {
                count += block.Ts >= fromMs && block.Ts < toMs ? 1 : 0;
            }
        }
        return count;
    }

    protected override async Task AddRawAsync(DbConnection connection, string deviceId, long fromMs, long toMs, long origin, long bucketMs, List<string> names,
        SortedDictionary<long, Accumulator> buckets, CancellationToken cancellationToken)
    {
        if (toMs <= fromMs)
        {
            return;
        }
        await using var command = connection.CreateCommand();
        await using var reader = await BlocksAsync(command, "data", deviceId, fromMs, toMs, cancellationToken);
        var block = new ReadingBlock.Reader();
        // Consecutive readings mostly fall in the same bucket: keep it at hand instead of looking it up each time.
        var current = long.MinValue;
        Accumulator? acc = null;
        while (await reader.ReadAsync(cancellationToken))
        {
            block.Reset(deviceId, reader.GetFieldValue<byte[]>(0));
            while (block.MoveNext())
            {
                if (block.Ts < fromMs || block.Ts >= toMs)
                {
                    continue;
                }
                var b = (block.Ts - origin) / bucketMs;
                if (b != current || acc is null)
                {
                    current = b;
                    acc = Bucket(buckets, b);
                }
                acc.Count++;
                foreach (var name in names)
                {
                    if (block.TryGetValue(name, out var value))
                    {
                        acc.Add(name, 1, value, value, value);
                    }
                }
            }
        }
    }

    protected override async Task<long> DeleteReadingsOlderThanAsync(DbConnection connection, long cutoffMs, CancellationToken cancellationToken)
    {
        await using var transaction = await connection.BeginTransactionAsync(cancellationToken);
        long deleted = 0;
        // Blocks that begin before the cutoff and end after it keep their later readings: rewritten, their count changes,
        // so the writer sees the row is no longer the one it left and starts a new block instead of writing the old back.
        var straddling = new List<(long RowId, string DeviceId, byte[] Data)>();
        await using (var select = connection.CreateCommand())
        {
            select.Transaction = transaction;
            select.CommandText = "SELECT rowid, device_id, data FROM reading_blocks WHERE first_ts < @cutoff AND last_ts >= @cutoff";
            Add(select, "@cutoff", cutoffMs);
            await using var reader = await select.ExecuteReaderAsync(cancellationToken);
            while (await reader.ReadAsync(cancellationToken))
            {
                straddling.Add((reader.GetInt64(0), reader.GetString(1), reader.GetFieldValue<byte[]>(2)));
            }
        }
        await using (var update = connection.CreateCommand())
        {
            update.Transaction = transaction;
            update.CommandText = "UPDATE reading_blocks SET first_ts = @first, last_ts = @last, n = @n, data = @data WHERE rowid = @rowid";
            var first = Add(update, "@first");
            var last = Add(update, "@last");
            var n = Add(update, "@n");
            var data = Add(update, "@data");
            var rowid = Add(update, "@rowid");
            foreach (var (id, device, bytes) in straddling)
            {
                var kept = new ReadingBlock();
                var all = ReadingBlock.Decode(device, bytes);
                foreach (var r in all.Where(r => r.Ts.ToUnixTimeMilliseconds() >= cutoffMs))
                {
                    kept.Add(r);
                }
                deleted += all.Count - kept.Count;
                (first.Value, last.Value, n.Value, data.Value, rowid.Value) = (kept.FirstTs, kept.LastTs, kept.Count, kept.Data.ToArray(), id);
                await update.ExecuteNonQueryAsync(cancellationToken);
            }
        }
        await using (var command = connection.CreateCommand())
        {
            command.Transaction = transaction;
            Add(command, "@cutoff", cutoffMs);
            command.CommandText = "SELECT COALESCE(SUM(n), 0) FROM reading_blocks WHERE last_ts < @cutoff";
            deleted += Convert.ToInt64(await command.ExecuteScalarAsync(cancellationToken), System.Globalization.CultureInfo.InvariantCulture);
            command.CommandText = "DELETE FROM reading_blocks WHERE last_ts < @cutoff";
            await command.ExecuteNonQueryAsync(cancellationToken);
            // A run ends with its latest reading: it goes once all of its readings are older than the cutoff.
            command.CommandText = "DELETE FROM seq_runs WHERE last_ts < @cutoff";
            await command.ExecuteNonQueryAsync(cancellationToken);
        }
        await transaction.CommitAsync(cancellationToken);
        return deleted;
    }

    protected override Task UpsertCommandsAsync(DbConnection connection, DbTransaction transaction, IReadOnlyList<CommandRecord> commands, CancellationToken cancellationToken)
    {
        using var upsert = new SqliteStatement((SqliteConnection)connection, $"""
            {InsertCommands} VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
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
            upsert.Bind(9, c.Switch);
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
