using System.Buffers.Binary;
using System.IO.Hashing;
using Microsoft.Extensions.Logging;

namespace Nightlight.Device;

/// <summary>When the outbox forces appended readings from the page cache to the disk (fsync).</summary>
public enum OutboxSync
{
    /// <summary>After every reading: a power cut loses nothing that was appended. Costs one fsync per reading.</summary>
    Always,

    /// <summary>Once per <see cref="OutboxOptions.SyncInterval"/>: a power cut loses at most that much.</summary>
    Interval,

    /// <summary>Never; the operating system writes back when it likes (Linux: within about 30 s). Survives kill -9 only.</summary>
    Never,
}

/// <summary>Limits and durability of an <see cref="Outbox"/>.</summary>
public sealed class OutboxOptions
{
    /// <summary>Largest backlog on disk, in bytes. When full, the oldest segment is dropped (counted and logged). Default 64 MiB.</summary>
    public long MaxBytes { get; set; } = 64L * 1024 * 1024;

    /// <summary>Size at which a new segment file starts; consumed segments are deleted whole. Default 4 MiB.</summary>
    public long SegmentBytes { get; set; } = 4L * 1024 * 1024;

    /// <summary>fsync policy. Default <see cref="OutboxSync.Always"/>.</summary>
    public OutboxSync Sync { get; set; } = OutboxSync.Always;

    /// <summary>Time between fsyncs with <see cref="OutboxSync.Interval"/>. Default 1 s.</summary>
    public TimeSpan SyncInterval { get; set; } = TimeSpan.FromSeconds(1);
}

/// <summary>Where a reading sits in an outbox: its segment file and byte offset.</summary>
/// <param name="Segment">Segment number (the file name).</param>
/// <param name="Offset">Byte offset inside the segment.</param>
public readonly record struct OutboxPosition(long Segment, long Offset) : IComparable<OutboxPosition>
{
    /// <inheritdoc />
    public int CompareTo(OutboxPosition other) => Segment != other.Segment ? Segment.CompareTo(other.Segment) : Offset.CompareTo(other.Offset);

    /// <summary>Orders positions.</summary>
    public static bool operator <(OutboxPosition a, OutboxPosition b) => a.CompareTo(b) < 0;

    /// <summary>Orders positions.</summary>
    public static bool operator >(OutboxPosition a, OutboxPosition b) => a.CompareTo(b) > 0;

    /// <summary>Orders positions.</summary>
    public static bool operator <=(OutboxPosition a, OutboxPosition b) => a.CompareTo(b) <= 0;

    /// <summary>Orders positions.</summary>
    public static bool operator >=(OutboxPosition a, OutboxPosition b) => a.CompareTo(b) >= 0;
}

/// <summary>Readings taken from the front of an outbox by <see cref="Outbox.Peek"/>, still in it until committed.</summary>
public sealed class OutboxBatch
{
    internal List<byte[]> Items { get; } = [];
    internal List<OutboxPosition> Ends { get; } = [];

    /// <summary>The payloads, oldest first.</summary>
    public IReadOnlyList<byte[]> Payloads => Items;

    /// <summary>Number of payloads.</summary>
    public int Count => Items.Count;
}

/// <summary>
/// A durable first-in first-out queue of payloads on disk: append-only segment files of length-prefixed,
/// CRC-checked records, and a cursor file that says how far the front has been sent. A reading is in the page cache
/// as soon as <see cref="Append"/> returns (so kill -9 loses nothing) and on the disk after the next fsync (see
/// <see cref="OutboxSync"/>). Delivery is at least once: a crash between sending and committing sends the last
/// readings again, which receivers recognise by their <c>seq</c>. A torn record at the end of a segment (a power cut
/// mid-write) is found by its checksum and cut off when the outbox is opened; a damaged one in the middle is skipped
/// and counted (<see cref="Damaged"/>), and the readings after it are kept. Thread-safe; owns its files.
/// </summary>
public sealed class Outbox : IDisposable
{
    const int HeaderBytes = 8;

    /// <summary>Largest payload accepted, in bytes.</summary>
    public const int MaxPayloadBytes = 64 * 1024;

    sealed class Segment(long number, string path)
    {
        public long Number { get; } = number;
        public string Path { get; } = path;
        public long Length { get; set; }
        public long Records { get; set; }
    }

    readonly string _directory;
    readonly OutboxOptions _options;
    readonly ILogger _logger;
    readonly Lock _gate = new();
    readonly List<Segment> _segments = [];
    readonly FileStream _cursor;
    readonly Timer? _syncTimer;
    readonly long _segmentBytes;
    FileStream _writer = null!;
    FileStream? _reader;
    long _readerSegment = -1;
    OutboxPosition _head;
    long _headRecords;
    long _pending;
    long _pendingBytes;
    long _dropped;
    long _damaged;
    long _droppedWhileDiskFull;
    bool _dirty;
    bool _disposed;

    /// <summary>Opens the outbox in <paramref name="directory"/> (created when missing), recovering what a crash left.</summary>
    public Outbox(string directory, OutboxOptions? options = null, ILogger? logger = null)
    {
        _directory = directory;
        _options = options ?? new OutboxOptions();
        _logger = logger ?? Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance;
        _segmentBytes = Math.Max(4096, Math.Min(_options.SegmentBytes, _options.MaxBytes / 4));
        System.IO.Directory.CreateDirectory(directory);
        _cursor = new FileStream(Path.Combine(directory, "cursor"), FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.Read, 1);
        Recover();
        if (_options.Sync == OutboxSync.Interval)
        {
            _syncTimer = new Timer(_ => SyncNow(), null, _options.SyncInterval, _options.SyncInterval);
        }
    }

    /// <summary>The directory the outbox lives in.</summary>
    public string Directory => _directory;

    /// <summary>Readings waiting to be sent.</summary>
    public long Count
    {
        get
        {
            lock (_gate)
            {
                return _pending;
            }
        }
    }

    /// <summary>Bytes on disk waiting to be sent, headers included.</summary>
    public long PendingBytes
    {
        get
        {
            lock (_gate)
            {
                return _pendingBytes;
            }
        }
    }

    /// <summary>Readings dropped because the outbox was full, since it was opened.</summary>
    public long Dropped => Interlocked.Read(ref _dropped);

    /// <summary>Readings skipped when the outbox was opened because their records failed the checksum (damaged on disk).</summary>
    public long Damaged => Interlocked.Read(ref _damaged);

    /// <summary>
    /// Appends one payload at the back. When the outbox is full, the oldest segment is dropped first. When the disk is
    /// full, the oldest unsent segment is dropped to make room, or this reading when there is none; either is counted
    /// in <see cref="Dropped"/> and logged, and appends work again as soon as there is space.
    /// </summary>
    public void Append(ReadOnlySpan<byte> payload)
    {
        if (payload.Length is 0 or > MaxPayloadBytes)
        {
            throw new ArgumentOutOfRangeException(nameof(payload), $"an outbox record is 1–{MaxPayloadBytes} bytes");
        }
        var record = new byte[HeaderBytes + payload.Length];
        BinaryPrimitives.WriteInt32LittleEndian(record, payload.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(record.AsSpan(4), Crc32.HashToUInt32(payload));
        payload.CopyTo(record.AsSpan(HeaderBytes));
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            MakeRoom(record.Length);
            if (TryWrite(record, out var failure))
            {
                if (_droppedWhileDiskFull > 0)
                {
                    _logger.LogWarning("Outbox {Directory}: the disk has space again; {Lost} readings were dropped while it was full ({Dropped} dropped since start)",
                        _directory, _droppedWhileDiskFull, _dropped);
                    _droppedWhileDiskFull = 0;
                }
                return;
            }
            // The disk is full: room comes from the oldest unsent readings, kept newest first like a full outbox.
            while (_segments.Count > 1)
            {
                DropOldestSegment($"the disk is full ({failure!.Message})");
                if (TryWrite(record, out failure))
                {
                    return;
                }
            }
            _dropped++;
            if (++_droppedWhileDiskFull == 1 || _droppedWhileDiskFull % 1000 == 0)
            {
                _logger.LogError("Outbox {Directory}: cannot write, the disk is full ({Problem}); dropping new readings until there is space ({Lost} so far)",
                    _directory, failure!.Message, _droppedWhileDiskFull);
            }
        }
    }

    /// <summary>Writes one record at the tail; on a write error nothing of it stays (a partial record would be damage).</summary>
    bool TryWrite(byte[] record, out IOException? failure)
    {
        failure = null;
        var tail = _segments[^1];
        try
        {
            if (tail.Length >= _segmentBytes)
            {
                tail = StartSegment(tail.Number + 1);
            }
            _writer.Write(record);
            if (_options.Sync == OutboxSync.Always)
            {
                _writer.Flush(flushToDisk: true);
            }
            else
            {
                _dirty = true;
            }
        }
        catch (IOException e)
        {
            failure = e;
            try
            {
                _writer.SetLength(tail.Length);
                _writer.Position = tail.Length;
            }
            catch (IOException)
            {
                // Shrinking needs no space; if even that fails, the torn record is cut when the outbox is next opened.
            }
            return false;
        }
        tail.Length += record.Length;
        tail.Records++;
        _pending++;
        _pendingBytes += record.Length;
        return true;
    }

    /// <summary>Copies up to <paramref name="max"/> payloads from the front, oldest first, without removing them.</summary>
    public OutboxBatch Peek(int max)
    {
        var batch = new OutboxBatch();
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            var position = _head;
            var index = _segments.FindIndex(s => s.Number == position.Segment);
            var header = new byte[HeaderBytes];
            while (batch.Count < max && index >= 0 && index < _segments.Count)
            {
                var segment = _segments[index];
                if (position.Offset >= segment.Length)
                {
                    if (++index < _segments.Count)
                    {
                        position = new OutboxPosition(_segments[index].Number, 0);
                    }
                    continue;
                }
                var reader = ReaderFor(segment);
                reader.Position = position.Offset;
                reader.ReadExactly(header);
                var length = BinaryPrimitives.ReadInt32LittleEndian(header);
                var payload = new byte[length];
                reader.ReadExactly(payload);
                position = new OutboxPosition(segment.Number, position.Offset + HeaderBytes + length);
                batch.Items.Add(payload);
                batch.Ends.Add(position);
            }
        }
        return batch;
    }

    /// <summary>
    /// Removes the first <paramref name="count"/> payloads of <paramref name="batch"/> (those that were sent) from the
    /// front. Readings dropped meanwhile because the outbox was full are skipped.
    /// </summary>
    public void Commit(OutboxBatch batch, int count)
    {
        if (count <= 0)
        {
            return;
        }
        var end = batch.Ends[count - 1];
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (end <= _head)
            {
                return;
            }
            // Count only the records still in the outbox: some of the batch may have been dropped for room.
            var firstKept = batch.Ends.FindIndex(e => e > _head);
            var committed = firstKept < 0 ? 0 : count - firstKept;
            var bytes = 0L;
            for (var i = Math.Max(firstKept, 0); i < count; i++)
            {
                bytes += batch.Items[i].Length + HeaderBytes;
            }
            _pending -= committed;
            _pendingBytes -= bytes;
            MoveHead(end);
        }
    }

    /// <summary>Forces appended readings to disk now.</summary>
    public void SyncNow()
    {
        FileStream writer;
        lock (_gate)
        {
            if (!_dirty || _disposed)
            {
                return;
            }
            writer = _writer;
            _dirty = false;
        }
        try
        {
            // Outside the lock: appends go on while the disk catches up. The writer is unbuffered, so this is fsync.
            writer.Flush(flushToDisk: true);
        }
        catch (ObjectDisposedException)
        {
            // The segment was finished (and flushed to disk) or the outbox closed meanwhile.
        }
    }

    void MoveHead(OutboxPosition end)
    {
        _head = end;
        WriteCursor();
        // Delete every fully sent segment but the last one, which new readings still go to.
        while (_segments.Count > 1 && (_segments[0].Number < _head.Segment || _head.Offset >= _segments[0].Length && _segments[0].Number == _head.Segment))
        {
            var gone = _segments[0];
            _segments.RemoveAt(0);
            DeleteSegment(gone);
            if (_head.Segment == gone.Number)
            {
                _head = new OutboxPosition(_segments[0].Number, 0);
                WriteCursor();
            }
        }
    }

    void MakeRoom(int recordBytes)
    {
        while (_pendingBytes + recordBytes > _options.MaxBytes && _segments.Count > 1)
        {
            DropOldestSegment($"it is full ({_options.MaxBytes} bytes)");
        }
    }

    void DropOldestSegment(string why)
    {
        var oldest = _segments[0];
        var lostRecords = oldest.Number == _head.Segment ? CountRecordsFrom(oldest, _head.Offset) : oldest.Records;
        var lostBytes = oldest.Length - (oldest.Number == _head.Segment ? _head.Offset : 0);
        _pending -= lostRecords;
        _pendingBytes -= lostBytes;
        _dropped += lostRecords;
        _segments.RemoveAt(0);
        DeleteSegment(oldest);
        _head = new OutboxPosition(_segments[0].Number, 0);
        WriteCursor();
        _logger.LogWarning("Outbox {Directory}: dropped the oldest {Lost} readings because {Why} ({Dropped} dropped since start)",
            _directory, lostRecords, why, _dropped);
    }

    long CountRecordsFrom(Segment segment, long offset)
    {
        var reader = ReaderFor(segment);
        var header = new byte[HeaderBytes];
        var records = 0L;
        while (offset < segment.Length)
        {
            reader.Position = offset;
            reader.ReadExactly(header);
            offset += HeaderBytes + BinaryPrimitives.ReadInt32LittleEndian(header);
            records++;
        }
        return records;
    }

    FileStream ReaderFor(Segment segment)
    {
        if (_readerSegment != segment.Number || _reader is null)
        {
            _reader?.Dispose();
            _reader = new FileStream(segment.Path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete, 64 * 1024);
            _readerSegment = segment.Number;
        }
        return _reader;
    }

    void DeleteSegment(Segment segment)
    {
        if (_readerSegment == segment.Number)
        {
            _reader?.Dispose();
            _reader = null;
            _readerSegment = -1;
        }
        File.Delete(segment.Path);
    }

    Segment StartSegment(long number)
    {
        if (_segments.Count > 0)
        {
            // The finished segment goes to disk whole before the next one starts, whatever the policy.
            _writer.Flush(flushToDisk: _options.Sync != OutboxSync.Never);
        }
        var segment = new Segment(number, Path.Combine(_directory, $"{number:D12}.seg"));
        // Opened before the finished one is closed: if this fails (a full disk), appends go on to the old one.
        var writer = new FileStream(segment.Path, FileMode.Append, FileAccess.Write, FileShare.Read | FileShare.Delete, 1);
        if (_segments.Count > 0)
        {
            _writer.Dispose();
        }
        _writer = writer;
        segment.Length = _writer.Length;
        _segments.Add(segment);
        return segment;
    }

    void WriteCursor()
    {
        Span<byte> bytes = stackalloc byte[20];
        BinaryPrimitives.WriteInt64LittleEndian(bytes, _head.Segment);
        BinaryPrimitives.WriteInt64LittleEndian(bytes[8..], _head.Offset);
        BinaryPrimitives.WriteUInt32LittleEndian(bytes[16..], Crc32.HashToUInt32(bytes[..16]));
        // Not fsynced: a cursor that is behind after a power cut only sends some readings twice.
        RandomAccess.Write(_cursor.SafeFileHandle, bytes, 0);
    }

    bool TryReadCursor(out OutboxPosition position)
    {
        position = default;
        Span<byte> bytes = stackalloc byte[20];
        if (RandomAccess.Read(_cursor.SafeFileHandle, bytes, 0) != 20 ||
            Crc32.HashToUInt32(bytes[..16]) != BinaryPrimitives.ReadUInt32LittleEndian(bytes[16..]))
        {
            return false;
        }
        position = new OutboxPosition(BinaryPrimitives.ReadInt64LittleEndian(bytes), BinaryPrimitives.ReadInt64LittleEndian(bytes[8..]));
        return true;
    }

    void Recover()
    {
        var numbers = System.IO.Directory.EnumerateFiles(_directory, "*.seg")
            .Select(path => long.TryParse(Path.GetFileNameWithoutExtension(path), out var n) ? n : -1)
            .Where(n => n >= 0).Order().ToList();
        var cursorFound = TryReadCursor(out var cursor);
        foreach (var number in numbers)
        {
            var path = Path.Combine(_directory, $"{number:D12}.seg");
            if (cursorFound && number < cursor.Segment)
            {
                File.Delete(path); // Sent before the crash; the delete after the cursor write did not happen.
                continue;
            }
            var segment = new Segment(number, path);
            Scan(segment, ref cursor);
            _segments.Add(segment);
        }
        if (_segments.Count == 0)
        {
            StartSegment(cursorFound ? cursor.Segment + 1 : 1);
        }
        else
        {
            var last = _segments[^1];
            _writer = new FileStream(last.Path, FileMode.Append, FileAccess.Write, FileShare.Read | FileShare.Delete, 1);
        }
        var first = _segments[0];
        var headOffset = cursorFound && cursor.Segment == first.Number ? Math.Min(cursor.Offset, first.Length) : 0;
        _head = new OutboxPosition(first.Number, headOffset);
        _headRecords = headOffset > 0 ? first.Records - CountRecordsFrom(first, headOffset) : 0;
        _pending = _segments.Sum(s => s.Records) - _headRecords;
        _pendingBytes = _segments.Sum(s => s.Length) - headOffset;
        WriteCursor();
        if (_pending > 0)
        {
            _logger.LogInformation("Outbox {Directory} holds {Count} readings from before the restart", _directory, _pending);
        }
    }

    /// <summary>
    /// Reads a segment through, checking every record. A torn record at the end (a crash mid-write) is cut off; a
    /// damaged record with valid records after it (a flipped bit, a bad sector) is skipped: the segment is rewritten
    /// without it, the skipped readings are counted in <see cref="Damaged"/> and logged, and the rest are kept.
    /// </summary>
    void Scan(Segment segment, ref OutboxPosition cursor)
    {
        var bytes = File.ReadAllBytes(segment.Path);
        var kept = new List<(int Offset, int Length)>();
        var damaged = new List<(int Offset, int Length)>();
        var offset = 0;
        while (offset < bytes.Length)
        {
            if (TryRecordAt(bytes, offset, out var length))
            {
                kept.Add((offset, length));
                offset += length;
                continue;
            }
            // Find the next offset where a whole, valid record starts; everything before it is damage.
            var next = offset + 1;
            while (next < bytes.Length && !TryRecordAt(bytes, next, out _))
            {
                next++;
            }
            damaged.Add((offset, next - offset));
            offset = next;
        }
        var keptBytes = kept.Sum(r => (long)r.Length);
        segment.Length = keptBytes;
        segment.Records = kept.Count;
        if (damaged.Count == 0)
        {
            return;
        }
        var tornTail = damaged.Count == 1 && damaged[0].Offset + damaged[0].Length == bytes.Length;
        if (tornTail)
        {
            _logger.LogWarning("Outbox segment {Path}: cut {Bytes} bytes of a torn record at offset {Offset} (a crash during a write)",
                segment.Path, damaged[0].Length, damaged[0].Offset);
        }
        else
        {
            // A damaged stretch's own headers can't be trusted: it counts as the readings of its size at the segment's
            // average record size, and at least one.
            var average = kept.Count > 0 ? (double)keptBytes / kept.Count : HeaderBytes + 32;
            var lost = damaged.Where(d => d.Offset + d.Length < bytes.Length).Sum(d => Math.Max(1, (long)Math.Round(d.Length / average)));
            _damaged += lost;
            _logger.LogError("Outbox segment {Path}: skipped {Lost} damaged readings ({Bytes} bytes failed their checksum); kept the {Kept} valid readings around them ({Damaged} skipped since start)",
                segment.Path, lost, damaged.Sum(d => d.Length), kept.Count, _damaged);
        }
        // The cursor keeps pointing at the same reading once the damage is gone from before it.
        if (cursor.Segment == segment.Number)
        {
            var at = cursor.Offset;
            var removedBefore = damaged.Where(d => d.Offset < at).Sum(d => Math.Min(d.Length, at - d.Offset));
            cursor = cursor with { Offset = at - removedBefore };
        }
        // Write the valid records to a new file and rename it over the old one, so a crash now leaves one or the other.
        var temporary = segment.Path + ".tmp";
        using (var stream = new FileStream(temporary, FileMode.Create, FileAccess.Write, FileShare.None, 64 * 1024))
        {
            foreach (var (start, length) in kept)
            {
                stream.Write(bytes, start, length);
            }
            stream.Flush(flushToDisk: true);
        }
        File.Move(temporary, segment.Path, overwrite: true);
    }

    /// <summary>True when a whole record with a matching checksum starts at <paramref name="offset"/>; its size with the header.</summary>
    static bool TryRecordAt(byte[] bytes, int offset, out int recordBytes)
    {
        recordBytes = 0;
        if (bytes.Length - offset < HeaderBytes)
        {
            return false;
        }
        var length = BinaryPrimitives.ReadInt32LittleEndian(bytes.AsSpan(offset));
        if (length is <= 0 or > MaxPayloadBytes || bytes.Length - offset - HeaderBytes < length)
        {
            return false;
        }
        if (Crc32.HashToUInt32(bytes.AsSpan(offset + HeaderBytes, length)) != BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(offset + 4)))
        {
            return false;
        }
        recordBytes = HeaderBytes + length;
        return true;
    }

    /// <summary>Flushes to disk and closes the files.</summary>
    public void Dispose()
    {
        _syncTimer?.Dispose();
        lock (_gate)
        {
            if (_disposed)
            {
                return;
            }
            _disposed = true;
            _writer.Flush(flushToDisk: _options.Sync != OutboxSync.Never);
            _writer.Dispose();
            _reader?.Dispose();
            _cursor.Dispose();
        }
    }
}
