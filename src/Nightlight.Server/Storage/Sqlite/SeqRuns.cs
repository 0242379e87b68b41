using Microsoft.Data.Sqlite;

namespace Nightlight.Server.Storage.Sqlite;

/// <summary>
/// The seqs SQLite has stored, as runs without a gap: one row of <c>seq_runs</c> per run of a device's epoch, not one
/// per reading. A numbered device sends in order, so nearly every reading extends its run in memory here and the run's
/// row is written once per batch. A row per reading put an index entry per reading back into the writer's transaction:
/// at 20,000 numbered readings/s from 1,000 devices it was a page per device per batch and most of the commit
/// (docs/benchmarks/storage.md#seq-runs).
/// </summary>
/// <remarks>
/// Only the run each (device, epoch) is extending is kept, with the first seq of the next stored run as its
/// limit: a seq inside it is a copy, the next one extends it, and anything else is looked up in the table (after the
/// run is written, so the table is current). Not thread-safe: the store's one writer uses it, inside its transaction.
/// </remarks>
sealed class SeqRuns
{
    sealed class Run
    {
        public long Lo;
        public long Hi;
        public long LastTs;

        /// <summary>The first seq of the next stored run of this epoch, or <see cref="long.MaxValue"/>: the run grows up to it, not into it.</summary>
        public long Limit;

        /// <summary>True once the run has its row (keyed by <see cref="Lo"/>).</summary>
        public bool HasRow;

        public bool Dirty;
        public long LastBatch;
    }

    readonly Dictionary<(string DeviceId, long Epoch), Run> _runs = [];
    readonly List<((string DeviceId, long Epoch) Key, Run Run)> _dirty = [];

    /// <summary>Runs untouched for this many batches are forgotten (and read back from the table when needed).</summary>
    const int KeptForBatches = 300;

    /// <summary>Forgets every run: the table is the truth again (another connection changed it, or a batch rolled back).</summary>
    public void Clear()
    {
        _runs.Clear();
        _dirty.Clear();
    }

    /// <summary>
    /// Records a reading's seq; false when the device's reading with that epoch and seq is stored already (in the table,
    /// or earlier in this batch).
    /// </summary>
    public bool TryAdd(Statements statements, string deviceId, long epoch, long seq, long ts, long batch)
    {
        var key = (deviceId, epoch);
        if (_runs.TryGetValue(key, out var run))
        {
            run.LastBatch = batch;
            if (seq >= run.Lo && seq <= run.Hi)
            {
                return false;
            }
            if (seq == run.Hi + 1 && seq < run.Limit)
            {
                run.Hi = seq;
                run.LastTs = Math.Max(run.LastTs, ts);
                MarkDirty(key, run);
                return true;
            }
            // Written before the table is asked, so the answer includes it.
            Save(statements, key, run);
        }
        var stored = statements.Floor(deviceId, epoch, seq);
        var limit = statements.Ceiling(deviceId, epoch, seq);
        if (stored is { } floor && floor.Hi >= seq)
        {
            // A copy of a reading stored in an earlier run: that run becomes the one at hand, as the copies of a resent
            // backlog come one after another.
            _runs[key] = new Run { Lo = floor.Lo, Hi = floor.Hi, LastTs = floor.LastTs, Limit = limit, HasRow = true, LastBatch = batch };
            return false;
        }
        run = stored is { } before && before.Hi + 1 == seq
            ? new Run { Lo = before.Lo, Hi = seq, LastTs = Math.Max(before.LastTs, ts), Limit = limit, HasRow = true, LastBatch = batch }
            : new Run { Lo = seq, Hi = seq, LastTs = ts, Limit = limit, LastBatch = batch };
        _runs[key] = run;
        MarkDirty(key, run);
        return true;
    }

    void MarkDirty((string, long) key, Run run)
    {
        if (!run.Dirty)
        {
            run.Dirty = true;
            _dirty.Add((key, run));
        }
    }

    /// <summary>Writes every run this batch changed, and forgets runs idle for long.</summary>
    public void SaveAll(Statements statements, long batch)
    {
        foreach (var (key, run) in _dirty)
        {
            if (run.Dirty)
            {
                Save(statements, key, run);
            }
        }
        _dirty.Clear();
        if (batch % KeptForBatches == 0)
        {
            foreach (var (key, run) in _runs)
            {
                if (run.LastBatch <= batch - KeptForBatches)
                {
                    _runs.Remove(key);
                }
            }
        }
    }

    static void Save(Statements statements, (string DeviceId, long Epoch) key, Run run)
    {
        if (!run.Dirty)
        {
            return;
        }
        // A row gone since it was read (retention on the writer's own connection) is written anew.
        if (!run.HasRow || !statements.Update(key.DeviceId, key.Epoch, run.Lo, run.Hi, run.LastTs))
        {
            statements.Insert(key.DeviceId, key.Epoch, run.Lo, run.Hi, run.LastTs);
            run.HasRow = true;
        }
        run.Dirty = false;
    }

    /// <summary>A stored run of seqs.</summary>
    public readonly record struct StoredRun(long Lo, long Hi, long LastTs);

    /// <summary>The statements on <c>seq_runs</c>, prepared once per batch on the writer's connection.</summary>
    public sealed class Statements(SqliteConnection connection) : IDisposable
    {
        readonly SqliteStatement _floor = new(connection,
            "SELECT lo, hi, last_ts FROM seq_runs WHERE device_id = ?1 AND epoch = ?2 AND lo <= ?3 ORDER BY lo DESC LIMIT 1");
        readonly SqliteStatement _ceiling = new(connection,
            "SELECT lo FROM seq_runs WHERE device_id = ?1 AND epoch = ?2 AND lo > ?3 ORDER BY lo LIMIT 1");
        readonly SqliteStatement _insert = new(connection, "INSERT INTO seq_runs (device_id, epoch, lo, hi, last_ts) VALUES (?1, ?2, ?3, ?4, ?5)");
        readonly SqliteStatement _update = new(connection, "UPDATE seq_runs SET hi = ?4, last_ts = ?5 WHERE device_id = ?1 AND epoch = ?2 AND lo = ?3");

        /// <summary>The stored run with the greatest first seq at or below <paramref name="seq"/>, if any.</summary>
        public StoredRun? Floor(string deviceId, long epoch, long seq)
        {
            _floor.Bind(1, deviceId);
            _floor.Bind(2, epoch);
            _floor.Bind(3, seq);
            return _floor.TryReadRow(static s => new StoredRun(s.Int64(0), s.Int64(1), s.Int64(2)), out var run) ? run : null;
        }

        /// <summary>The first seq of the stored run after <paramref name="seq"/>, or <see cref="long.MaxValue"/>.</summary>
        public long Ceiling(string deviceId, long epoch, long seq)
        {
            _ceiling.Bind(1, deviceId);
            _ceiling.Bind(2, epoch);
            _ceiling.Bind(3, seq);
            return _ceiling.TryReadRow(static s => s.Int64(0), out var lo) ? lo : long.MaxValue;
        }

        public void Insert(string deviceId, long epoch, long lo, long hi, long lastTs)
        {
            _insert.Bind(1, deviceId);
            _insert.Bind(2, epoch);
            _insert.Bind(3, lo);
            _insert.Bind(4, hi);
            _insert.Bind(5, lastTs);
            _insert.Execute();
        }

        /// <summary>Sets the end of the run that begins at <paramref name="lo"/>; false when it has no row.</summary>
        public bool Update(string deviceId, long epoch, long lo, long hi, long lastTs)
        {
            _update.Bind(1, deviceId);
            _update.Bind(2, epoch);
            _update.Bind(3, lo);
            _update.Bind(4, hi);
            _update.Bind(5, lastTs);
            return _update.Execute() == 1;
        }

        public void Dispose()
        {
            _floor.Dispose();
            _ceiling.Dispose();
            _insert.Dispose();
            _update.Dispose();
        }
    }
}
