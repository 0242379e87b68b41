using System.Buffers.Binary;
using System.Diagnostics;
using System.IO.Hashing;
using System.Runtime.InteropServices;
using System.Text;
using Microsoft.Extensions.Logging;
using Nightlight.Broker.Core.Packets;

namespace Nightlight.Broker.Core.Persistence;

/// <summary>When a <see cref="FileSessionStore"/> forces its journal from the page cache to the disk (fsync).</summary>
public enum StoreFsync
{
    /// <summary>Every batch of changes is fsynced before <see cref="ISessionStore.CommitAsync"/> completes: nothing acknowledged is lost, even by a power cut.</summary>
    Batch,

    /// <summary>
    /// Changes are written at once and fsynced every <see cref="FileSessionStoreOptions.SyncInterval"/>; a commit waits
    /// for the write, not the fsync. Survives kill -9; a power cut may lose the last interval.
    /// </summary>
    Interval,

    /// <summary>Changes are written at once and never fsynced (the operating system writes back); a commit waits for the write. Survives kill -9, not a power cut.</summary>
    Never,
}

/// <summary>Durability and size limits of a <see cref="FileSessionStore"/>.</summary>
public sealed class FileSessionStoreOptions
{
    /// <summary>The fsync policy. Default <see cref="StoreFsync.Batch"/>.</summary>
    public StoreFsync Fsync { get; set; } = StoreFsync.Batch;

    /// <summary>Time between fsyncs with <see cref="StoreFsync.Interval"/>. Default 1 s.</summary>
    public TimeSpan SyncInterval { get; set; } = TimeSpan.FromSeconds(1);

    /// <summary>A journal larger than this (and larger than the live data) is compacted into a snapshot. Default 64 MiB.</summary>
    public long CompactBytes { get; set; } = 64L * 1024 * 1024;

    /// <summary>A journal this many times larger than the live data is compacted even below <see cref="CompactBytes"/>. Default 4.</summary>
    public int CompactRatio { get; set; } = 4;

    /// <summary>No compaction below this journal size. Default 1 MiB.</summary>
    public long MinCompactBytes { get; set; } = 1024 * 1024;

    /// <summary>How often writing is tried again after the disk refused it (full). Default 1 s.</summary>
    public TimeSpan RetryInterval { get; set; } = TimeSpan.FromSeconds(1);
}

/// <summary>
/// An <see cref="ISessionStore"/> on files in one directory: an append-only journal of CRC-checked records, compacted
/// into a snapshot when it grows. Calls only queue a change; one background writer appends what has queued and
/// fsyncs it (group commit), so many calls share one fsync. On load a damaged record is skipped (counted, logged) and
/// the records after it are kept; a torn record at the end (a crash mid-write) is cut off. When the disk refuses a
/// write (full), the store logs once, keeps the state in memory and writes it whole as a snapshot as soon as it can.
/// Thread-safe; owns its files.
/// </summary>
public sealed class FileSessionStore : ISessionStore
{
    // Record: u32 body length, u32 CRC-32 of those 4 bytes, u32 CRC-32 of the body, body (a kind byte, then fields).
    // The header's own checksum lets a scan past damage reject false starts without checksumming a false body.
    const int HeaderBytes = 12;
    const string SnapshotName = "snapshot";
    const string JournalPrefix = "journal.";
    // The snapshot's first record names the format. 2: will records (SaveWill, DeleteWill) may appear. Format 1 stores
    // may hold them too (they came without a bump), so 1 reads exactly as 2. A journal needs no header of its own: it
    // is written only after the snapshot that names it is in place, by the same broker.
    const int Format = 2;
    const int OldestFormat = 1;

    enum Kind : byte
    {
        SaveSession = 1,
        DeleteSession = 2,
        SaveMessage = 3,
        Enqueue = 4,
        UpdateDelivery = 5,
        Complete = 6,
        SaveRetained = 7,
        DeleteRetained = 8,
        InboundQoS2 = 9,
        SnapshotHeader = 10,
        SaveWill = 11,
        DeleteWill = 12,
    }

    /// <summary>One queued change, in the form the writer both journals and applies to its own copy of the state.</summary>
    sealed class Change
    {
        public Kind Kind;
        public string ClientId = "";
        public StoredSession? Session;
        public StoredWill? Will;
        public long MessageId;
        public ApplicationMessage? Message;
        public StoredDelivery Delivery;
        public ushort PacketId;
        public bool Flag;
        public string Topic = "";
        public int Format;
    }

    sealed class SessionState(StoredSession session)
    {
        public StoredSession Session = session;
        public readonly LinkedList<StoredDelivery> Order = new();
        public readonly Dictionary<long, LinkedListNode<StoredDelivery>> ById = [];
    }

    sealed class MessageState(ApplicationMessage message, long orphanedAtCompaction)
    {
        public readonly ApplicationMessage Message = message;
        public int References;
        public long OrphanedAtCompaction = orphanedAtCompaction;
    }

    readonly string _directory;
    readonly FileSessionStoreOptions _options;
    readonly ILogger _logger;
    readonly Lock _gate = new();
    readonly SemaphoreSlim _wake = new(0);
    readonly TaskCompletionSource _writerDone = new(TaskCreationOptions.RunContinuationsAsynchronously);

    // Guarded by _gate: what callers queued and who waits for it.
    List<Change> _queued = [];
    long _queuedCount;
    long _writtenCount;
    readonly List<(long Upto, TaskCompletionSource Done)> _waiters = [];
    bool _woken;
    bool _stopping;
    bool _loaded;

    // Owned by the writer thread (and by Load before it starts): the state as journalled, and the journal.
    readonly Dictionary<string, SessionState> _sessions = [];
    readonly Dictionary<long, MessageState> _messages = [];
    readonly Dictionary<string, ApplicationMessage> _retained = [];
    readonly Dictionary<string, HashSet<ushort>> _inbound = [];
    readonly Dictionary<string, StoredWill> _wills = [];
    readonly MemoryStream _buffer = new();
    readonly BinaryWriter _bufferWriter;
    long _lastMessageId;
    long _liveBytes;
    long _compactions;
    FileStream? _journal;
    long _generation;
    long _journalBytes;
    bool _diskFailed;
    long _lastSync;
    long _lastRetry;
    Thread? _writer;

    long _damagedRecords;
    long _writeFailures;

    /// <summary>Uses <paramref name="directory"/> (created readable only by its owner when missing); nothing is read until <see cref="Load"/>.</summary>
    public FileSessionStore(string directory, FileSessionStoreOptions? options, ILogger logger)
    {
        _directory = Path.GetFullPath(directory);
        _options = options ?? new FileSessionStoreOptions();
        _logger = logger;
        _bufferWriter = new BinaryWriter(_buffer, Encoding.UTF8, leaveOpen: true);
    }

    /// <summary>Records skipped on load because they failed their checksum.</summary>
    public long DamagedRecords => Interlocked.Read(ref _damagedRecords);

    /// <summary>Writes the disk refused (a full disk), since start.</summary>
    public long WriteFailures => Interlocked.Read(ref _writeFailures);

    /// <summary>Snapshots written, the one at load included.</summary>
    public long Compactions => Interlocked.Read(ref _compactions);

    /// <summary>Bytes in the current journal.</summary>
    public long JournalBytes => Interlocked.Read(ref _journalBytes);

    /// <summary>False while the disk refuses writes: the state is served from memory and not durable.</summary>
    public bool Durable => !Volatile.Read(ref _diskFailed);

    public BrokerSnapshot Load()
    {
        lock (_gate)
        {
            if (_loaded)
            {
                throw new InvalidOperationException("The session store is already loaded.");
            }
            _loaded = true;
        }
        CreatePrivateDirectory(_directory);
        File.Delete(Path.Combine(_directory, SnapshotName + ".tmp"));
        var snapshotPath = Path.Combine(_directory, SnapshotName);
        var firstGeneration = 0L;
        if (File.Exists(snapshotPath))
        {
            firstGeneration = Replay(snapshotPath, isSnapshot: true, isLast: false);
        }
        var journals = ListJournals();
        foreach (var (generation, path) in journals)
        {
            if (generation < firstGeneration)
            {
                continue; // Already in the snapshot; a crash came between writing it and deleting this.
            }
            Replay(path, isSnapshot: false, isLast: generation == journals[^1].Generation);
        }
        var snapshot = new BrokerSnapshot { LastMessageId = _lastMessageId };
        foreach (var state in _sessions.Values)
        {
            snapshot.Sessions.Add((state.Session, [.. state.Order]));
            foreach (var delivery in state.Order)
            {
                snapshot.Messages.TryAdd(delivery.MessageId, _messages[delivery.MessageId].Message);
            }
        }
        snapshot.Retained.AddRange(_retained.Values);
        foreach (var (clientId, packetIds) in _inbound)
        {
            snapshot.InboundQoS2[clientId] = [.. packetIds];
        }
        foreach (var (clientId, will) in _wills)
        {
            snapshot.Wills[clientId] = will;
        }
        // Start clean: damage and torn tails stay behind in the files this replaces.
        _generation = Math.Max(firstGeneration, journals.Count > 0 ? journals[^1].Generation : 0);
        _lastRetry = Stopwatch.GetTimestamp();
        TryDisk(Compact);
        if (snapshot.Sessions.Count > 0 || snapshot.Retained.Count > 0)
        {
            _logger.LogInformation("Broker store {Directory}: resumed {Sessions} sessions, {Messages} queued messages, {Retained} retained messages",
                _directory, snapshot.Sessions.Count, snapshot.Messages.Count, snapshot.Retained.Count);
        }
        _writer = new Thread(WriteLoop) { IsBackground = true, Name = "broker store writer" };
        _writer.Start();
        return snapshot;
    }

    public void SaveSession(StoredSession session) => Queue(new Change { Kind = Kind.SaveSession, ClientId = session.ClientId, Session = session });

    public void DeleteSession(string clientId) => Queue(new Change { Kind = Kind.DeleteSession, ClientId = clientId });

    public void SaveWill(StoredWill will) => Queue(new Change { Kind = Kind.SaveWill, ClientId = will.ClientId, Will = will });

    public void DeleteWill(string clientId) => Queue(new Change { Kind = Kind.DeleteWill, ClientId = clientId });

    public void SaveMessage(long messageId, ApplicationMessage message) => Queue(new Change { Kind = Kind.SaveMessage, MessageId = messageId, Message = message });

    public void Enqueue(string clientId, StoredDelivery delivery) => Queue(new Change { Kind = Kind.Enqueue, ClientId = clientId, Delivery = delivery, MessageId = delivery.MessageId });

    public void UpdateDelivery(string clientId, long messageId, ushort packetId, bool released) =>
        Queue(new Change { Kind = Kind.UpdateDelivery, ClientId = clientId, MessageId = messageId, PacketId = packetId, Flag = released });

    public void Complete(string clientId, long messageId) => Queue(new Change { Kind = Kind.Complete, ClientId = clientId, MessageId = messageId });

    public void SaveRetained(ApplicationMessage message) => Queue(new Change { Kind = Kind.SaveRetained, Topic = message.Topic, Message = message });

    public void DeleteRetained(string topic) => Queue(new Change { Kind = Kind.DeleteRetained, Topic = topic });

    public void SaveInboundQoS2(string clientId, ushort packetId, bool pending) =>
        Queue(new Change { Kind = Kind.InboundQoS2, ClientId = clientId, PacketId = packetId, Flag = pending });

    public ValueTask CommitAsync(CancellationToken cancellationToken = default)
    {
        // Every policy waits for the writer: a change still in this process's memory would not survive kill -9.
        TaskCompletionSource done;
        lock (_gate)
        {
            if (_writtenCount >= _queuedCount || _stopping)
            {
                return ValueTask.CompletedTask;
            }
            done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            _waiters.Add((_queuedCount, done));
        }
        return new ValueTask(cancellationToken.CanBeCanceled ? done.Task.WaitAsync(cancellationToken) : done.Task);
    }

    public async ValueTask DisposeAsync()
    {
        Thread? writer;
        lock (_gate)
        {
            if (_stopping)
            {
                return;
            }
            _stopping = true;
            writer = _writer;
        }
        _wake.Release();
        if (writer is not null)
        {
            await _writerDone.Task.ConfigureAwait(false);
        }
        CompleteWaiters(long.MaxValue);
        _journal?.Dispose();
        _bufferWriter.Dispose();
        _wake.Dispose();
    }

    void Queue(Change change)
    {
        lock (_gate)
        {
            if (_stopping)
            {
                return;
            }
            _queued.Add(change);
            _queuedCount++;
            if (_woken)
            {
                return;
            }
            _woken = true;
        }
        _wake.Release();
    }

    void WriteLoop()
    {
        try
        {
            var spare = new List<Change>();
            while (true)
            {
                var timeout = _diskFailed ? _options.RetryInterval
                    : _options.Fsync == StoreFsync.Interval ? _options.SyncInterval
                    : Timeout.InfiniteTimeSpan;
                _wake.Wait(timeout);
                List<Change> changes;
                long upto;
                bool stopping;
                lock (_gate)
                {
                    changes = _queued;
                    _queued = spare;
                    upto = _queuedCount;
                    stopping = _stopping;
                    _woken = false;
                }
                WriteBatch(changes, stopping);
                changes.Clear();
                spare = changes;
                CompleteWaiters(upto);
                if (stopping)
                {
                    return;
                }
            }
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // A bug, not a disk problem: say so loudly and stop holding up acknowledgements.
            _logger.LogCritical(e, "Broker store {Directory}: the writer failed; sessions are no longer saved", _directory);
            lock (_gate)
            {
                _stopping = true;
            }
            CompleteWaiters(long.MaxValue);
        }
        finally
        {
            _writerDone.TrySetResult();
        }
    }

    void WriteBatch(List<Change> changes, bool final)
    {
        foreach (var change in changes)
        {
            if (!_diskFailed)
            {
                Serialize(change);
            }
            Apply(change);
        }
        if (_diskFailed)
        {
            // The journal lost records when the disk refused them: the whole state goes to a new snapshot instead.
            if (!final && Stopwatch.GetElapsedTime(_lastRetry) < _options.RetryInterval)
            {
                return;
            }
            _lastRetry = Stopwatch.GetTimestamp();
            if (TryDisk(Compact))
            {
                _diskFailed = false;
                _logger.LogWarning("Broker store {Directory}: the disk takes writes again; saved the whole state ({Failures} writes refused since start)",
                    _directory, WriteFailures);
            }
            return;
        }
        var due = _options.Fsync == StoreFsync.Batch && _buffer.Length > 0
            || _options.Fsync == StoreFsync.Interval && Stopwatch.GetElapsedTime(_lastSync) >= _options.SyncInterval
            || final && _options.Fsync != StoreFsync.Never;
        if (_buffer.Length == 0 && !due)
        {
            return;
        }
        TryDisk(() =>
        {
            AppendBuffer();
            if (due)
            {
                _journal!.Flush(flushToDisk: true);
                _lastSync = Stopwatch.GetTimestamp();
            }
        });
        if (!_diskFailed && ShouldCompact())
        {
            TryDisk(Compact);
        }
    }

    bool TryDisk(Action write)
    {
        try
        {
            write();
            return true;
        }
        catch (IOException e)
        {
            _buffer.SetLength(0);
            try
            {
                // Cut what part of the batch reached the file: a torn record there would read as damage later.
                _journal?.SetLength(_journalBytes);
                _journal?.Seek(_journalBytes, SeekOrigin.Begin);
            }
            catch (IOException)
            {
                // Shrinking needs no space; if even that fails, the torn tail is cut on the next load.
            }
            var failures = Interlocked.Increment(ref _writeFailures);
            if (!_diskFailed)
            {
                _logger.LogError("Broker store {Directory}: cannot write ({Problem}); serving sessions from memory, not durable, until the disk takes writes again ({Failures} refused since start)",
                    _directory, e.Message, failures);
            }
            _diskFailed = true;
            return false;
        }
    }

    void AppendBuffer()
    {
        if (_buffer.Length == 0)
        {
            return;
        }
        _journal!.Write(_buffer.GetBuffer(), 0, (int)_buffer.Length);
        Interlocked.Add(ref _journalBytes, _buffer.Length);
        _buffer.SetLength(0);
    }

    bool ShouldCompact()
    {
        var journal = _journalBytes;
        return journal > _options.MinCompactBytes
            && (journal > (long)_options.CompactRatio * _liveBytes || journal > Math.Max(_options.CompactBytes, _liveBytes));
    }

    void CompleteWaiters(long upto)
    {
        List<TaskCompletionSource>? done = null;
        lock (_gate)
        {
            _writtenCount = Math.Max(_writtenCount, Math.Min(upto, _queuedCount));
            for (var i = _waiters.Count - 1; i >= 0; i--)
            {
                if (_waiters[i].Upto <= upto)
                {
                    (done ??= []).Add(_waiters[i].Done);
                    _waiters.RemoveAt(i);
                }
            }
        }
        if (done is not null)
        {
            foreach (var waiter in done)
            {
                waiter.TrySetResult();
            }
        }
    }

    /// <summary>
    /// Starts journal <c>generation + 1</c>, writes the state as a snapshot that names it (temporary file, fsync,
    /// rename, fsync of the directory) and deletes the older journals. A crash at any step leaves a snapshot and the
    /// journals after it, which replay to the same state.
    /// </summary>
    void Compact()
    {
        _buffer.SetLength(0);
        var next = _generation + 1;
        var journalPath = JournalPath(next);
        var journal = new FileStream(journalPath, PrivateFile(FileMode.Create, FileAccess.Write));
        try
        {
            SyncDirectory(_directory);
            var temporary = Path.Combine(_directory, SnapshotName + ".tmp");
            using (var file = new FileStream(temporary, PrivateFile(FileMode.Create, FileAccess.Write)))
            {
                WriteState(file, next);
                file.Flush(flushToDisk: true);
            }
            File.Move(temporary, Path.Combine(_directory, SnapshotName), overwrite: true);
            SyncDirectory(_directory);
        }
        catch
        {
            journal.Dispose();
            throw;
        }
        if (_journal is not null)
        {
            try
            {
                _journal.Dispose();
            }
            catch (IOException)
            {
                // What it failed to write is in the snapshot.
            }
        }
        _journal = journal;
        _generation = next;
        Interlocked.Exchange(ref _journalBytes, 0);
        _lastSync = Stopwatch.GetTimestamp();
        Interlocked.Increment(ref _compactions);
        foreach (var (generation, path) in ListJournals())
        {
            if (generation < next)
            {
                File.Delete(path);
            }
        }
    }

    void WriteState(FileStream file, long journalGeneration)
    {
        var compaction = _compactions + 1;
        void Flush(bool always)
        {
            if (always || _buffer.Length >= 1024 * 1024)
            {
                file.Write(_buffer.GetBuffer(), 0, (int)_buffer.Length);
                _buffer.SetLength(0);
            }
        }
        Begin(Kind.SnapshotHeader);
        _bufferWriter.Write(Format);
        _bufferWriter.Write(journalGeneration);
        _bufferWriter.Write(_lastMessageId);
        End();
        // A message no delivery refers to is kept through one compaction: its Enqueue may be in the next batch.
        var forgotten = new List<long>();
        foreach (var (id, message) in _messages)
        {
            if (message.References == 0)
            {
                if (message.OrphanedAtCompaction < compaction - 1)
                {
                    forgotten.Add(id);
                    continue;
                }
            }
            WriteSaveMessage(id, message.Message);
            Flush(always: false);
        }
        foreach (var id in forgotten)
        {
            ForgetMessage(id);
        }
        foreach (var state in _sessions.Values)
        {
            WriteSaveSession(state.Session);
            foreach (var delivery in state.Order)
            {
                WriteEnqueue(state.Session.ClientId, delivery);
                Flush(always: false);
            }
        }
        foreach (var will in _wills.Values)
        {
            WriteSaveWill(will);
            Flush(always: false);
        }
        foreach (var message in _retained.Values)
        {
            WriteSaveRetained(message);
            Flush(always: false);
        }
        foreach (var (clientId, packetIds) in _inbound)
        {
            foreach (var packetId in packetIds)
            {
                Begin(Kind.InboundQoS2);
                _bufferWriter.Write(clientId);
                _bufferWriter.Write(packetId);
                _bufferWriter.Write(true);
                End();
            }
        }
        Flush(always: true);
    }

    // ---- the state, as the journal describes it ----

    void Apply(Change change)
    {
        switch (change.Kind)
        {
            case Kind.SaveSession:
                if (_sessions.TryGetValue(change.ClientId, out var existing))
                {
                    _liveBytes += SessionBytes(change.Session!) - SessionBytes(existing.Session);
                    existing.Session = change.Session!;
                }
                else
                {
                    _sessions[change.ClientId] = new SessionState(change.Session!);
                    _liveBytes += SessionBytes(change.Session!);
                }
                break;
            case Kind.DeleteSession:
                if (_sessions.Remove(change.ClientId, out var gone))
                {
                    _liveBytes -= SessionBytes(gone.Session) + gone.Order.Count * DeliveryBytes;
                    foreach (var delivery in gone.Order)
                    {
                        Release(delivery.MessageId);
                    }
                }
                _inbound.Remove(change.ClientId);
                if (_wills.Remove(change.ClientId, out var forgotten))
                {
                    _liveBytes -= WillBytes(forgotten);
                }
                break;
            case Kind.SaveWill:
                if (_wills.Remove(change.ClientId, out var previous))
                {
                    _liveBytes -= WillBytes(previous);
                }
                _wills[change.ClientId] = change.Will!;
                _liveBytes += WillBytes(change.Will!);
                break;
            case Kind.DeleteWill:
                if (_wills.Remove(change.ClientId, out var removed))
                {
                    _liveBytes -= WillBytes(removed);
                }
                break;
            case Kind.SaveMessage:
                if (!_messages.ContainsKey(change.MessageId))
                {
                    _messages[change.MessageId] = new MessageState(change.Message!, _compactions);
                    _liveBytes += MessageBytes(change.Message!);
                }
                _lastMessageId = Math.Max(_lastMessageId, change.MessageId);
                break;
            case Kind.Enqueue:
                if (_sessions.TryGetValue(change.ClientId, out var session) && _messages.TryGetValue(change.MessageId, out var message))
                {
                    if (session.ById.TryGetValue(change.MessageId, out var node))
                    {
                        node.Value = change.Delivery;
                    }
                    else
                    {
                        session.ById[change.MessageId] = session.Order.AddLast(change.Delivery);
                        message.References++;
                        _liveBytes += DeliveryBytes;
                    }
                }
                break;
            case Kind.UpdateDelivery:
                if (_sessions.TryGetValue(change.ClientId, out session) && session.ById.TryGetValue(change.MessageId, out var updated))
                {
                    updated.Value = updated.Value with { PacketId = change.PacketId, Released = change.Flag };
                }
                break;
            case Kind.Complete:
                if (_sessions.TryGetValue(change.ClientId, out session) && session.ById.Remove(change.MessageId, out var completed))
                {
                    session.Order.Remove(completed);
                    _liveBytes -= DeliveryBytes;
                    Release(change.MessageId);
                }
                break;
            case Kind.SaveRetained:
                if (_retained.Remove(change.Topic, out var replaced))
                {
                    _liveBytes -= MessageBytes(replaced);
                }
                _retained[change.Topic] = change.Message!;
                _liveBytes += MessageBytes(change.Message!);
                break;
            case Kind.DeleteRetained:
                if (_retained.Remove(change.Topic, out var deleted))
                {
                    _liveBytes -= MessageBytes(deleted);
                }
                break;
            case Kind.InboundQoS2:
                if (change.Flag)
                {
                    if (!_inbound.TryGetValue(change.ClientId, out var packetIds))
                    {
                        _inbound[change.ClientId] = packetIds = [];
                    }
                    packetIds.Add(change.PacketId);
                }
                else if (_inbound.TryGetValue(change.ClientId, out var packetIds) && packetIds.Remove(change.PacketId) && packetIds.Count == 0)
                {
                    _inbound.Remove(change.ClientId);
                }
                break;
        }
    }

    void Release(long messageId)
    {
        if (_messages.TryGetValue(messageId, out var message) && --message.References <= 0)
        {
            ForgetMessage(messageId);
        }
    }

    void ForgetMessage(long messageId)
    {
        if (_messages.Remove(messageId, out var message))
        {
            _liveBytes -= MessageBytes(message.Message);
        }
    }

    const int DeliveryBytes = 48;

    static long MessageBytes(ApplicationMessage message) => 64 + message.Topic.Length + message.Payload.Length;

    static long WillBytes(StoredWill will) => 32 + will.ClientId.Length + MessageBytes(will.Message);

    static long SessionBytes(StoredSession session) => 64 + session.ClientId.Length + session.Subscriptions.Sum(s => 24L + s.Filter.Length);

    // ---- records ----

    void Serialize(Change change)
    {
        switch (change.Kind)
        {
            case Kind.SaveSession:
                WriteSaveSession(change.Session!);
                break;
            case Kind.SaveMessage:
                WriteSaveMessage(change.MessageId, change.Message!);
                break;
            case Kind.Enqueue:
                WriteEnqueue(change.ClientId, change.Delivery);
                break;
            case Kind.SaveRetained:
                WriteSaveRetained(change.Message!);
                break;
            case Kind.SaveWill:
                WriteSaveWill(change.Will!);
                break;
            default:
                Begin(change.Kind);
                switch (change.Kind)
                {
                    case Kind.DeleteSession:
                    case Kind.DeleteWill:
                        _bufferWriter.Write(change.ClientId);
                        break;
                    case Kind.UpdateDelivery:
                        _bufferWriter.Write(change.ClientId);
                        _bufferWriter.Write(change.MessageId);
                        _bufferWriter.Write(change.PacketId);
                        _bufferWriter.Write(change.Flag);
                        break;
                    case Kind.Complete:
                        _bufferWriter.Write(change.ClientId);
                        _bufferWriter.Write(change.MessageId);
                        break;
                    case Kind.DeleteRetained:
                        _bufferWriter.Write(change.Topic);
                        break;
                    case Kind.InboundQoS2:
                        _bufferWriter.Write(change.ClientId);
                        _bufferWriter.Write(change.PacketId);
                        _bufferWriter.Write(change.Flag);
                        break;
                }
                End();
                break;
        }
    }

    long _recordStart;

    void Begin(Kind kind)
    {
        _recordStart = _buffer.Length;
        _buffer.Position = _recordStart;
        _bufferWriter.Write(0L);
        _bufferWriter.Write(0);
        _bufferWriter.Write((byte)kind);
    }

    void End()
    {
        _bufferWriter.Flush();
        var bytes = _buffer.GetBuffer().AsSpan((int)_recordStart, (int)(_buffer.Length - _recordStart));
        var body = bytes[HeaderBytes..];
        BinaryPrimitives.WriteInt32LittleEndian(bytes, body.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(bytes[4..], Crc32.HashToUInt32(bytes[..4]));
        BinaryPrimitives.WriteUInt32LittleEndian(bytes[8..], Crc32.HashToUInt32(body));
    }

    void WriteSaveSession(StoredSession session)
    {
        Begin(Kind.SaveSession);
        var w = _bufferWriter;
        w.Write(session.ClientId);
        WriteOptional(w, session.Identity);
        w.Write(session.SessionExpiryInterval);
        w.Write(session.DisconnectedAtUnixMs);
        w.Write(session.Subscriptions.Count);
        foreach (var s in session.Subscriptions)
        {
            w.Write(s.Filter);
            w.Write(s.MaximumQoS);
            w.Write(s.NoLocal);
            w.Write(s.RetainAsPublished);
            w.Write(s.RetainHandling);
            w.Write(s.SubscriptionIdentifier);
        }
        End();
    }

    void WriteSaveMessage(long messageId, ApplicationMessage message)
    {
        Begin(Kind.SaveMessage);
        _bufferWriter.Write(messageId);
        WriteMessage(_bufferWriter, message);
        End();
    }

    void WriteEnqueue(string clientId, StoredDelivery delivery)
    {
        Begin(Kind.Enqueue);
        var w = _bufferWriter;
        w.Write(clientId);
        w.Write(delivery.MessageId);
        w.Write(delivery.PacketId);
        w.Write(delivery.QoS);
        w.Write(delivery.Retain);
        w.Write(delivery.Released);
        var identifiers = delivery.SubscriptionIdentifiers ?? [];
        w.Write(identifiers.Length);
        foreach (var identifier in identifiers)
        {
            w.Write(identifier);
        }
        End();
    }

    void WriteSaveWill(StoredWill will)
    {
        Begin(Kind.SaveWill);
        var w = _bufferWriter;
        w.Write(will.ClientId);
        WriteOptional(w, will.Identity);
        w.Write(will.Listener);
        w.Write(will.DelayInterval);
        w.Write(will.DueAtUnixMs);
        WriteMessage(w, will.Message);
        End();
    }

    void WriteSaveRetained(ApplicationMessage message)
    {
        Begin(Kind.SaveRetained);
        WriteMessage(_bufferWriter, message);
        End();
    }

    static void WriteOptional(BinaryWriter w, string? value)
    {
        w.Write(value is not null);
        if (value is not null)
        {
            w.Write(value);
        }
    }

    static string? ReadOptional(BinaryReader r) => r.ReadBoolean() ? r.ReadString() : null;

    static void WriteMessage(BinaryWriter w, ApplicationMessage message)
    {
        w.Write(message.Topic);
        w.Write(message.QoS);
        w.Write(message.Retain);
        w.Write(message.ExpiresAtUnixMs);
        WriteOptional(w, message.SenderClientId);
        w.Write(message.Payload.Length);
        w.Write(message.Payload.Span);
        var p = message.Properties;
        w.Write(p is not null);
        if (p is null)
        {
            return;
        }
        w.Write(p.PayloadFormatIndicator.HasValue);
        w.Write(p.PayloadFormatIndicator ?? 0);
        w.Write(p.MessageExpiryInterval.HasValue);
        w.Write(p.MessageExpiryInterval ?? 0);
        WriteOptional(w, p.ContentType);
        WriteOptional(w, p.ResponseTopic);
        w.Write(p.CorrelationData is not null);
        if (p.CorrelationData is not null)
        {
            w.Write(p.CorrelationData.Length);
            w.Write(p.CorrelationData);
        }
        w.Write(p.UserProperties?.Count ?? -1);
        foreach (var property in p.UserProperties ?? [])
        {
            w.Write(property.Name);
            w.Write(property.Value);
        }
    }

    static ApplicationMessage ReadMessage(BinaryReader r)
    {
        var topic = r.ReadString();
        var qos = r.ReadByte();
        var retain = r.ReadBoolean();
        var expiresAt = r.ReadInt64();
        var sender = ReadOptional(r);
        var payload = r.ReadBytes(r.ReadInt32());
        MessageProperties? properties = null;
        if (r.ReadBoolean())
        {
            properties = new MessageProperties();
            var hasFormat = r.ReadBoolean();
            var format = r.ReadByte();
            properties.PayloadFormatIndicator = hasFormat ? format : null;
            var hasExpiry = r.ReadBoolean();
            var expiry = r.ReadUInt32();
            properties.MessageExpiryInterval = hasExpiry ? expiry : null;
            properties.ContentType = ReadOptional(r);
            properties.ResponseTopic = ReadOptional(r);
            if (r.ReadBoolean())
            {
                properties.CorrelationData = r.ReadBytes(r.ReadInt32());
            }
            var userProperties = r.ReadInt32();
            if (userProperties >= 0)
            {
                properties.UserProperties = new List<UserProperty>(userProperties);
                for (var i = 0; i < userProperties; i++)
                {
                    properties.UserProperties.Add(new UserProperty(r.ReadString(), r.ReadString()));
                }
            }
        }
        return new ApplicationMessage
        {
            Topic = topic,
            Payload = payload,
            QoS = qos,
            Retain = retain,
            ExpiresAtUnixMs = expiresAt,
            SenderClientId = sender,
            Properties = properties,
        };
    }

    /// <summary>Parses one checksummed record body into a change; false when it does not parse (a bug or a CRC collision).</summary>
    static bool TryParse(ReadOnlySpan<byte> body, out Change change, out long snapshotGeneration)
    {
        change = new Change();
        snapshotGeneration = -1;
        using var stream = new MemoryStream(body.ToArray(), writable: false);
        using var r = new BinaryReader(stream, Encoding.UTF8);
        try
        {
            change.Kind = (Kind)r.ReadByte();
            switch (change.Kind)
            {
                case Kind.SaveSession:
                    var clientId = r.ReadString();
                    var identity = ReadOptional(r);
                    var expiry = r.ReadUInt32();
                    var disconnectedAt = r.ReadInt64();
                    var count = r.ReadInt32();
                    var subscriptions = new List<StoredSubscription>(Math.Min(count, 4096));
                    for (var i = 0; i < count; i++)
                    {
                        subscriptions.Add(new StoredSubscription(r.ReadString(), r.ReadByte(), r.ReadBoolean(), r.ReadBoolean(), r.ReadByte(), r.ReadUInt32()));
                    }
                    change.ClientId = clientId;
                    change.Session = new StoredSession(clientId, identity, expiry, disconnectedAt, subscriptions);
                    break;
                case Kind.DeleteSession:
                case Kind.DeleteWill:
                    change.ClientId = r.ReadString();
                    break;
                case Kind.SaveWill:
                    change.ClientId = r.ReadString();
                    var willIdentity = ReadOptional(r);
                    var listener = r.ReadString();
                    var delay = r.ReadUInt32();
                    var dueAt = r.ReadInt64();
                    change.Will = new StoredWill(change.ClientId, willIdentity, listener, ReadMessage(r), delay, dueAt);
                    break;
                case Kind.SaveMessage:
                    change.MessageId = r.ReadInt64();
                    change.Message = ReadMessage(r);
                    break;
                case Kind.Enqueue:
                    change.ClientId = r.ReadString();
                    var messageId = r.ReadInt64();
                    var packetId = r.ReadUInt16();
                    var qos = r.ReadByte();
                    var retain = r.ReadBoolean();
                    var released = r.ReadBoolean();
                    var identifierCount = r.ReadInt32();
                    if (identifierCount < 0 || identifierCount > body.Length)
                    {
                        return false;
                    }
                    var identifiers = new uint[identifierCount];
                    for (var i = 0; i < identifiers.Length; i++)
                    {
                        identifiers[i] = r.ReadUInt32();
                    }
                    change.MessageId = messageId;
                    change.Delivery = new StoredDelivery(messageId, packetId, qos, retain, released, identifiers);
                    break;
                case Kind.UpdateDelivery:
                    change.ClientId = r.ReadString();
                    change.MessageId = r.ReadInt64();
                    change.PacketId = r.ReadUInt16();
                    change.Flag = r.ReadBoolean();
                    break;
                case Kind.Complete:
                    change.ClientId = r.ReadString();
                    change.MessageId = r.ReadInt64();
                    break;
                case Kind.SaveRetained:
                    change.Message = ReadMessage(r);
                    change.Topic = change.Message.Topic;
                    break;
                case Kind.DeleteRetained:
                    change.Topic = r.ReadString();
                    break;
                case Kind.InboundQoS2:
                    change.ClientId = r.ReadString();
                    change.PacketId = r.ReadUInt16();
                    change.Flag = r.ReadBoolean();
                    break;
                case Kind.SnapshotHeader:
                    change.Format = r.ReadInt32();
                    if (change.Format > Format)
                    {
                        return true; // A newer format may lay out the rest differently; Replay refuses it.
                    }
                    if (change.Format < OldestFormat)
                    {
                        return false;
                    }
                    snapshotGeneration = r.ReadInt64();
                    change.MessageId = r.ReadInt64();
                    break;
                default:
                    return false;
            }
            return stream.Position == stream.Length;
        }
        catch (Exception e) when (e is EndOfStreamException or IOException or FormatException or ArgumentException or OverflowException)
        {
            return false;
        }
    }

    /// <summary>
    /// Applies every valid record of one file; returns the journal generation a snapshot names (0 for a journal or a
    /// snapshot whose header is lost). A damaged stretch followed by valid records is skipped, counted and logged; one at
    /// the very end of the newest journal is a torn write and is only logged.
    /// </summary>
    long Replay(string path, bool isSnapshot, bool isLast)
    {
        var bytes = File.ReadAllBytes(path);
        var generation = 0L;
        var offset = 0;
        var damagedStretches = 0;
        var damagedBytes = 0L;
        var tornBytes = 0L;
        var records = 0;
        while (offset < bytes.Length)
        {
            if (TryRecordAt(bytes, offset, out var length) && TryParse(bytes.AsSpan(offset + HeaderBytes, length - HeaderBytes), out var change, out var named))
            {
                records++;
                if (change.Kind == Kind.SnapshotHeader)
                {
                    if (isSnapshot && offset == 0 && change.Format > Format)
                    {
                        // Not damage: reading on would skip what this version does not know, and the snapshot written
                        // after loading would destroy it for the version that wrote it.
                        throw new InvalidDataException($"broker store {path} is in format {change.Format}, written by a newer Nightlight; this version reads formats up to {Format}. Run that newer version, or move {_directory} away to start without its stored sessions.");
                    }
                    if (isSnapshot && offset == 0)
                    {
                        generation = named;
                        _lastMessageId = Math.Max(_lastMessageId, change.MessageId);
                    }
                }
                else
                {
                    Apply(change);
                }
                offset += length;
                continue;
            }
            var next = offset + 1;
            while (next < bytes.Length && !(TryRecordAt(bytes, next, out var candidate) && TryParse(bytes.AsSpan(next + HeaderBytes, candidate - HeaderBytes), out _, out _)))
            {
                next++;
            }
            if (next >= bytes.Length && isLast && !isSnapshot)
            {
                tornBytes = bytes.Length - offset;
            }
            else
            {
                damagedStretches++;
                damagedBytes += next - offset;
            }
            offset = next;
        }
        if (tornBytes > 0)
        {
            _logger.LogWarning("Broker store {Path}: cut {Bytes} bytes of a torn record at the end (a crash during a write)", path, tornBytes);
        }
        if (damagedStretches > 0)
        {
            var total = Interlocked.Add(ref _damagedRecords, damagedStretches);
            _logger.LogError("Broker store {Path}: skipped {Damaged} damaged records ({Bytes} bytes failed their checksum); kept the {Kept} valid records around them ({Total} skipped since start)",
                path, damagedStretches, damagedBytes, records, total);
        }
        return generation;
    }

    /// <summary>True when a whole record whose header and body checksums match starts at <paramref name="offset"/>; its size with the header.</summary>
    static bool TryRecordAt(byte[] bytes, int offset, out int recordBytes)
    {
        recordBytes = 0;
        if (bytes.Length - offset < HeaderBytes + 1)
        {
            return false;
        }
        var header = bytes.AsSpan(offset, HeaderBytes);
        if (Crc32.HashToUInt32(header[..4]) != BinaryPrimitives.ReadUInt32LittleEndian(header[4..]))
        {
            return false;
        }
        var length = BinaryPrimitives.ReadInt32LittleEndian(header);
        if (length <= 0 || bytes.Length - offset - HeaderBytes < length)
        {
            return false;
        }
        if (Crc32.HashToUInt32(bytes.AsSpan(offset + HeaderBytes, length)) != BinaryPrimitives.ReadUInt32LittleEndian(header[8..]))
        {
            return false;
        }
        recordBytes = HeaderBytes + length;
        return true;
    }

    // ---- files ----

    string JournalPath(long generation) => Path.Combine(_directory, $"{JournalPrefix}{generation:D12}");

    List<(long Generation, string Path)> ListJournals() =>
        [.. Directory.EnumerateFiles(_directory, JournalPrefix + "*")
            .Select(path => (Generation: long.TryParse(Path.GetFileName(path).AsSpan(JournalPrefix.Length), out var g) ? g : -1, Path: path))
            .Where(j => j.Generation >= 0)
            .OrderBy(j => j.Generation)];

    static FileStreamOptions PrivateFile(FileMode mode, FileAccess access)
    {
        var options = new FileStreamOptions { Mode = mode, Access = access, Share = FileShare.Read, BufferSize = 0 };
        if (!OperatingSystem.IsWindows())
        {
            options.UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
        }
        return options;
    }

    static void CreatePrivateDirectory(string path)
    {
        if (OperatingSystem.IsWindows() || Directory.Exists(path))
        {
            Directory.CreateDirectory(path);
            return;
        }
        Directory.CreateDirectory(path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
    }

    /// <summary>fsync of a directory, so a rename or a new file in it survives a power cut (.NET opens no directory handles).</summary>
    static void SyncDirectory(string path)
    {
        if (OperatingSystem.IsWindows())
        {
            return; // NTFS journals its metadata; there is no directory fsync.
        }
        var descriptor = NativeMethods.open(path, 0);
        if (descriptor < 0)
        {
            throw new IOException($"cannot open directory {path} to sync it (errno {Marshal.GetLastPInvokeError()})");
        }
        try
        {
            if (NativeMethods.fsync(descriptor) != 0)
            {
                throw new IOException($"cannot sync directory {path} (errno {Marshal.GetLastPInvokeError()})");
            }
        }
        finally
        {
            _ = NativeMethods.close(descriptor);
        }
    }

    static class NativeMethods
    {
        [DllImport("libc", SetLastError = true)]
        [DefaultDllImportSearchPaths(DllImportSearchPath.SafeDirectories)]
        internal static extern int open([MarshalAs(UnmanagedType.LPUTF8Str)] string path, int flags);

        [DllImport("libc", SetLastError = true)]
        [DefaultDllImportSearchPaths(DllImportSearchPath.SafeDirectories)]
        internal static extern int fsync(int descriptor);

        [DllImport("libc", SetLastError = true)]
        [DefaultDllImportSearchPaths(DllImportSearchPath.SafeDirectories)]
        internal static extern int close(int descriptor);
    }
}
