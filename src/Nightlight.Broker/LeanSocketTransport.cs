using System.Buffers;
using System.Diagnostics;
using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Http.Features;

namespace Nightlight.Broker;

/// <summary>
/// One accepted TCP connection as a Kestrel connection whose transport is the pipe the broker core reads and writes.
/// An idle connection holds no buffer: the input waits with a zero-byte receive and rents a buffer only once bytes have
/// arrived, the output rents one only until its bytes are sent. The socket is non-blocking, so most reads and writes
/// finish at once without an asynchronous operation. Owns the socket: closes it once the core has completed both input
/// and output, or when Kestrel disposes the connection.
/// </summary>
sealed class LeanSocketConnection : ConnectionContext, IDuplexPipe
{
    static long s_lastId;

    IDictionary<object, object?>? _items;
    EndPoint? _remoteEndPoint;
    EndPoint? _localEndPoint;
    int _halvesCompleted;
    // Created only when Kestrel disposes the connection before the core has completed both halves.
    TaskCompletionSource? _closed;

    /// <param name="socket">The accepted socket; made non-blocking here.</param>
    public LeanSocketConnection(Socket socket)
    {
        socket.Blocking = false;
        Socket = socket;
        // Kestrel reads it for every connection (its start line and log scope), so it is made here once.
        ConnectionId = "mqtt-" + Interlocked.Increment(ref s_lastId).ToString(System.Globalization.CultureInfo.InvariantCulture);
        Input = new SocketInput(this);
        Output = new SocketOutput(this);
        Transport = this;
    }

    internal Socket Socket { get; }

    public PipeReader Input { get; }

    public PipeWriter Output { get; }

    public override IDuplexPipe Transport { get; set; }

    public override string ConnectionId { get; set; }

    public override IFeatureCollection Features { get; } = new SmallFeatureCollection();

    public override IDictionary<object, object?> Items
    {
        get => _items ??= new Dictionary<object, object?>();
        set => _items = value;
    }

    /// <summary>The socket's (it keeps the address once asked), unless something set another.</summary>
    public override EndPoint? RemoteEndPoint
    {
        get => _remoteEndPoint ?? Address(remote: true);
        set => _remoteEndPoint = value;
    }

    public override EndPoint? LocalEndPoint
    {
        get => _localEndPoint ?? Address(remote: false);
        set => _localEndPoint = value;
    }

    EndPoint? Address(bool remote)
    {
        try
        {
            return remote ? Socket.RemoteEndPoint : Socket.LocalEndPoint;
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            // Closed already: no address to give.
            return null;
        }
    }

    /// <summary>Both ways at once: a pending receive ends, a pending send fails, and the core sees a lost connection.</summary>
    public override void Abort(ConnectionAbortedException abortReason) => Shutdown(Socket);

    /// <summary>Ends both halves (a core that has not yet is told by its input and output) and waits until the socket is closed.</summary>
    public override ValueTask DisposeAsync()
    {
        Input.Complete();
        Output.Complete();
        if (Volatile.Read(ref _halvesCompleted) >= 2)
        {
            return ValueTask.CompletedTask;
        }
        var closed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        closed = Interlocked.CompareExchange(ref _closed, closed, null) ?? closed;
        if (Volatile.Read(ref _halvesCompleted) >= 2)
        {
            // Closed while the wait was being set up: HalfCompleted may not have seen it.
            closed.TrySetResult();
        }
        return new ValueTask(closed.Task);
    }

    /// <summary>Smallest buffer rented for a receive: a typical MQTT packet from a device fits in it many times over.</summary>
    internal const int MinimumBufferSize = 4096;

    /// <summary>
    /// Smallest buffer rented for a write: a command to a device fits. Many are held at once while the application
    /// server's answers wait for their send loops; at 4 KB each they added 20-70 MB to the broker under load.
    /// </summary>
    internal const int MinimumWriteSize = 256;

    internal static byte[] Rent(int size, int minimum = MinimumBufferSize) => ArrayPool<byte>.Shared.Rent(Math.Max(size, minimum));

    internal static void Return(byte[]? buffer)
    {
        if (buffer is not null)
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>Shuts <paramref name="how"/> down; a peer already gone or a socket already closed is no error here.</summary>
    internal static void Shutdown(Socket socket, SocketShutdown how = SocketShutdown.Both)
    {
        try
        {
            socket.Shutdown(how);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            // Nothing left to shut.
        }
    }

    /// <summary>One half is done; after both, the connection ends with a FIN (what is left unread is the client's loss).</summary>
    internal void HalfCompleted()
    {
        if (Interlocked.Increment(ref _halvesCompleted) != 2)
        {
            return;
        }
        Shutdown(Socket);
        Socket.Dispose();
        Volatile.Read(ref _closed)?.TrySetResult();
    }
}

/// <summary>
/// Reads one socket into a single buffer that grows when a packet does not fit and is given back whenever everything
/// in it has been consumed. Cancelling a read ends the input for good (the broker core cancels only to end the
/// connection), which spares every idle connection a cancellation registration on its pending receive.
/// </summary>
sealed class SocketInput(LeanSocketConnection transport) : PipeReader
{
    byte[]? _buffer;
    int _start;
    int _end;
    bool _examinedAll;
    bool _ended;
    volatile bool _cancelled;
    bool _completed;

    Socket Socket => transport.Socket;

    public override ValueTask<ReadResult> ReadAsync(CancellationToken cancellationToken = default)
    {
        if (TryRead(out var result))
        {
            return new ValueTask<ReadResult>(result);
        }
        return ReceiveAsync(cancellationToken);
    }

    public override bool TryRead(out ReadResult result)
    {
        ObjectDisposedException.ThrowIf(_completed, this);
        if (_cancelled)
        {
            _cancelled = false;
            result = new ReadResult(Buffered, isCanceled: true, isCompleted: _ended);
            return true;
        }
        if ((_start < _end && !_examinedAll) || _ended)
        {
            result = new ReadResult(Buffered, isCanceled: false, isCompleted: _ended);
            return true;
        }
        result = default;
        return false;
    }

    ReadOnlySequence<byte> Buffered => _buffer is null ? ReadOnlySequence<byte>.Empty : new ReadOnlySequence<byte>(_buffer, _start, _end - _start);

    // Pooled: a connection going idle and waking again would otherwise leave a state machine behind each time.
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    async ValueTask<ReadResult> ReceiveAsync(CancellationToken cancellationToken)
    {
        try
        {
            while (true)
            {
                if (_start == _end)
                {
                    // Nothing kept between packets: wait for bytes (or the end) without a buffer. The buffer is the
                    // smallest size, not sized by Socket.Available: that is one more system call per burst.
                    await Socket.ReceiveAsync(Memory<byte>.Empty, SocketFlags.None, cancellationToken).ConfigureAwait(false);
                    _buffer ??= LeanSocketConnection.Rent(LeanSocketConnection.MinimumBufferSize);
                }
                else
                {
                    MakeRoom();
                }
                var received = Socket.Receive(_buffer!, _end, _buffer!.Length - _end, SocketFlags.None, out var error);
                if (error == SocketError.Success)
                {
                    _end += received;
                    _examinedAll = false;
                    _ended |= received == 0;
                    break;
                }
                if (error != SocketError.WouldBlock)
                {
                    // The reset or failed connection, as a stream reports it; the core treats it as a lost connection.
                    throw new IOException($"Receiving failed: {error}", new SocketException((int)error));
                }
                if (_start == _end)
                {
                    // Woken without bytes: go back to waiting without the buffer.
                    LeanSocketConnection.Return(_buffer);
                    _buffer = null;
                    _start = _end = 0;
                }
                else
                {
                    // The rest of a packet: wait for it holding what came so far.
                    await Socket.ReceiveAsync(Memory<byte>.Empty, SocketFlags.None, cancellationToken).ConfigureAwait(false);
                }
            }
        }
        catch (SocketException e)
        {
            throw new IOException(e.Message, e);
        }
        var cancelled = _cancelled;
        _cancelled = false;
        return new ReadResult(Buffered, cancelled, _ended && !cancelled);
    }

    /// <summary>Space after the unconsumed bytes of a packet that is still arriving: moved to the front, or into a buffer twice the size.</summary>
    void MakeRoom()
    {
        var buffer = _buffer!;
        var kept = _end - _start;
        if (buffer.Length - _end >= LeanSocketConnection.MinimumBufferSize / 4)
        {
            return;
        }
        var target = kept > buffer.Length / 2 ? LeanSocketConnection.Rent(buffer.Length * 2) : buffer;
        Buffer.BlockCopy(buffer, _start, target, 0, kept);
        if (target != buffer)
        {
            LeanSocketConnection.Return(buffer);
            _buffer = target;
        }
        _start = 0;
        _end = kept;
    }

    public override void AdvanceTo(SequencePosition consumed) => AdvanceTo(consumed, consumed);

    public override void AdvanceTo(SequencePosition consumed, SequencePosition examined)
    {
        if (_buffer is null)
        {
            return;
        }
        var start = Offset(consumed);
        var examinedTo = Offset(examined);
        if (start < _start || start > _end || examinedTo < start || examinedTo > _end)
        {
            throw new InvalidOperationException("AdvanceTo was given a position outside the last buffer read.");
        }
        _start = start;
        _examinedAll = examinedTo == _end;
        if (_start == _end)
        {
            LeanSocketConnection.Return(_buffer);
            _buffer = null;
            _start = _end = 0;
        }
    }

    int Offset(SequencePosition position) =>
        ReferenceEquals(position.GetObject(), _buffer) ? position.GetInteger() : throw new InvalidOperationException("AdvanceTo was given a position of another buffer.");

    public override void CancelPendingRead()
    {
        _cancelled = true;
        // Wakes a pending receive with the end of input; the peer sees nothing until the socket is closed.
        LeanSocketConnection.Shutdown(Socket, SocketShutdown.Receive);
    }

    public override void Complete(Exception? exception = null)
    {
        if (_completed)
        {
            return;
        }
        _completed = true;
        LeanSocketConnection.Return(_buffer);
        _buffer = null;
        transport.HalfCompleted();
    }
}

/// <summary>
/// Collects what the broker core writes into a rented buffer and sends it on flush. A connection that flushes rarely (a
/// device) sends at once on the flushing thread and holds no buffer after. A busy one (the application server's, with a
/// packet from every device) hands its flushes to a send loop on the thread pool: what is flushed while the loop waits
/// or sends is appended to one queued buffer and goes out in one system call, and the buffer goes back once drained.
/// Beyond <see cref="MaxQueuedBytes"/>, or while the socket takes nothing (a client that stopped reading), a flush
/// stays pending until the loop has sent everything, so the core holds further packets and applies its own limits.
/// A failed send reports the output completed, as a pipe whose reader went away does.
/// </summary>
sealed class SocketOutput(LeanSocketConnection transport) : PipeWriter, IThreadPoolWorkItem
{
    /// <summary>Flushes closer together than this go through the send loop: one packet a millisecond or more.</summary>
    static readonly long BusyInterval = Stopwatch.Frequency / 1000;

    /// <summary>Bytes the send loop may hold before a flush waits for it.</summary>
    internal const int MaxQueuedBytes = 64 * 1024;

    /// <summary>Flushes a thread sends at once within <see cref="BusyInterval"/>; later ones go to their connections' send loops.</summary>
    const int MaxInlineSendsPerThread = 8;

    [ThreadStatic]
    static long t_windowStart;

    [ThreadStatic]
    static int t_flushesInWindow;

    // The writer's (one at a time, as for any PipeWriter).
    byte[]? _buffer;
    int _written;
    long _lastFlushAt;

    // Shared with the send loop, under _sync.
    readonly Lock _sync = new();
    byte[]? _queued;
    int _queuedLength;
    bool _looping;
    bool _stalled;
    TaskCompletionSource<FlushResult>? _waiting;

    int _completeRequested;
    int _broken;
    int _reported;

    Socket Socket => transport.Socket;

    bool Over => Volatile.Read(ref _completeRequested) != 0 || Volatile.Read(ref _broken) != 0;

    public override Memory<byte> GetMemory(int sizeHint = 0)
    {
        Reserve(sizeHint);
        return _buffer.AsMemory(_written);
    }

    public override Span<byte> GetSpan(int sizeHint = 0)
    {
        Reserve(sizeHint);
        return _buffer.AsSpan(_written);
    }

    void Reserve(int sizeHint)
    {
        // A send loop that failed meanwhile does not stop the write: the next flush discards it and reports the end.
        if (Volatile.Read(ref _completeRequested) != 0)
        {
            throw new InvalidOperationException("Writing to a completed output.");
        }
        _buffer = Grown(_buffer, _written, _written + Math.Max(sizeHint, 1));
    }

    /// <summary>A buffer of at least <paramref name="needed"/> bytes holding the first <paramref name="used"/> of <paramref name="buffer"/>.</summary>
    static byte[] Grown(byte[]? buffer, int used, int needed)
    {
        if (buffer is null)
        {
            return LeanSocketConnection.Rent(needed, LeanSocketConnection.MinimumWriteSize);
        }
        if (needed <= buffer.Length)
        {
            return buffer;
        }
        var larger = LeanSocketConnection.Rent(Math.Max(needed, buffer.Length * 2), LeanSocketConnection.MinimumWriteSize);
        Buffer.BlockCopy(buffer, 0, larger, 0, used);
        LeanSocketConnection.Return(buffer);
        return larger;
    }

    public override void Advance(int bytes)
    {
        if (bytes < 0 || _buffer is null || _written + bytes > _buffer.Length)
        {
            throw new ArgumentOutOfRangeException(nameof(bytes));
        }
        _written += bytes;
    }

    public override bool CanGetUnflushedBytes => true;

    public override long UnflushedBytes => _written;

    public override ValueTask<FlushResult> FlushAsync(CancellationToken cancellationToken = default)
    {
        if (Over)
        {
            LeanSocketConnection.Return(_buffer);
            _buffer = null;
            _written = 0;
            return Result(completed: true);
        }
        if (_written == 0)
        {
            return Result(completed: false);
        }
        var now = Stopwatch.GetTimestamp();
        var busy = now - _lastFlushAt < BusyInterval || FanningOut(now);
        _lastFlushAt = now;
        lock (_sync)
        {
            if (_looping || busy)
            {
                QueueLocked(0);
                if (!_looping)
                {
                    _looping = true;
                    // Behind the receives already queued: what they route here meanwhile goes out with this.
                    ThreadPool.UnsafeQueueUserWorkItem(this, preferLocal: false);
                }
                return _queuedLength > MaxQueuedBytes ? WaitLocked() : Result(completed: false);
            }
        }
        var sent = Socket.Send(_buffer!, 0, _written, SocketFlags.None, out var error);
        if (error == SocketError.Success && sent == _written)
        {
            LeanSocketConnection.Return(_buffer);
            _buffer = null;
            _written = 0;
            return Result(Over);
        }
        if (error is not (SocketError.Success or SocketError.WouldBlock))
        {
            Break();
            return Result(completed: true);
        }
        // The socket's send buffer is full (a slow or stalled client): the loop sends the rest when it drains.
        lock (_sync)
        {
            QueueLocked(error == SocketError.Success ? sent : 0);
            _looping = true;
            ThreadPool.UnsafeQueueUserWorkItem(this, preferLocal: false);
            return WaitLocked();
        }
    }

    /// <summary>
    /// True on a thread flushing to many connections at once (the application server's read loop, answering every
    /// device): its sends run on the thread pool's other threads, so one thread does not carry them all in turn.
    /// </summary>
    static bool FanningOut(long now)
    {
        if (now - t_windowStart >= BusyInterval)
        {
            t_windowStart = now;
            t_flushesInWindow = 0;
        }
        return ++t_flushesInWindow > MaxInlineSendsPerThread;
    }

    static ValueTask<FlushResult> Result(bool completed) => new(new FlushResult(isCanceled: false, isCompleted: completed));

    /// <summary>Moves what the writer wrote, from <paramref name="offset"/> on, behind what the loop has yet to send.</summary>
    void QueueLocked(int offset)
    {
        var length = _written - offset;
        if (_queued is null && offset == 0)
        {
            _queued = _buffer;
            _queuedLength = length;
        }
        else
        {
            _queued = Grown(_queued, _queuedLength, _queuedLength + length);
            Buffer.BlockCopy(_buffer!, offset, _queued, _queuedLength, length);
            _queuedLength += length;
            LeanSocketConnection.Return(_buffer);
        }
        _buffer = null;
        _written = 0;
    }

    /// <summary>A flush that ends when the loop has sent everything queued.</summary>
    ValueTask<FlushResult> WaitLocked() =>
        new((_waiting ??= new TaskCompletionSource<FlushResult>(TaskCreationOptions.RunContinuationsAsynchronously)).Task);

    /// <summary>The send loop: everything queued so far in one system call, then again from the back of the thread pool's queue.</summary>
    void IThreadPoolWorkItem.Execute()
    {
        byte[]? batch = null;
        var length = 0;
        lock (_sync)
        {
            if (_queued is null)
            {
                _looping = false;
            }
            else
            {
                batch = _queued;
                length = _queuedLength;
                _queued = null;
                _queuedLength = 0;
            }
        }
        if (batch is null)
        {
            ReportIfDone();
            return;
        }
        var sent = Socket.Send(batch, 0, length, SocketFlags.None, out var error);
        if (error == SocketError.Success && sent == length)
        {
            LeanSocketConnection.Return(batch);
            Sent();
        }
        else if (error is (SocketError.Success or SocketError.WouldBlock) && Volatile.Read(ref _completeRequested) == 0)
        {
            _ = SendRestAsync(batch, error == SocketError.Success ? sent : 0, length);
        }
        else
        {
            // Failed, or the socket is full after the core has finished: a client that stopped reading gets no more.
            LeanSocketConnection.Return(batch);
            Break();
        }
    }

    /// <summary>The socket took part of a batch: the rest goes when it drains; completing the output meanwhile ends the wait.</summary>
    async Task SendRestAsync(byte[] batch, int offset, int length)
    {
        var failed = false;
        lock (_sync)
        {
            _stalled = true;
        }
        try
        {
            if (Volatile.Read(ref _completeRequested) != 0)
            {
                failed = true;
            }
            while (!failed && offset < length)
            {
                var sent = await Socket.SendAsync(batch.AsMemory(offset, length - offset), SocketFlags.None).ConfigureAwait(false);
                failed = sent == 0;
                offset += sent;
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            failed = true;
        }
        lock (_sync)
        {
            _stalled = false;
        }
        LeanSocketConnection.Return(batch);
        if (failed)
        {
            Break();
        }
        else
        {
            Sent();
        }
    }

    /// <summary>A batch is out: a waiting flush ends, and the loop goes again if more was queued meanwhile.</summary>
    void Sent()
    {
        TaskCompletionSource<FlushResult>? waiting;
        lock (_sync)
        {
            waiting = _waiting;
            _waiting = null;
            if (_queued is null)
            {
                _looping = false;
            }
            else
            {
                ThreadPool.UnsafeQueueUserWorkItem(this, preferLocal: false);
            }
        }
        waiting?.TrySetResult(new FlushResult(isCanceled: false, isCompleted: Over));
        ReportIfDone();
    }

    /// <summary>The peer is gone or will get nothing more: what is queued is dropped and the output is over.</summary>
    void Break()
    {
        Interlocked.Exchange(ref _broken, 1);
        TaskCompletionSource<FlushResult>? waiting;
        lock (_sync)
        {
            LeanSocketConnection.Return(_queued);
            _queued = null;
            _queuedLength = 0;
            _looping = false;
            waiting = _waiting;
            _waiting = null;
        }
        waiting?.TrySetResult(new FlushResult(isCanceled: false, isCompleted: true));
        ReportIfDone();
    }

    public override void CancelPendingFlush()
    {
        // Not used by the broker core: a connection that cannot drain is ended by completing its output.
    }

    public override void Complete(Exception? exception = null)
    {
        Interlocked.Exchange(ref _completeRequested, 1);
        bool stalled;
        lock (_sync)
        {
            stalled = _stalled;
        }
        if (stalled)
        {
            // A client that stopped reading: shutting the socket ends the pending send, which then ends this half.
            LeanSocketConnection.Shutdown(Socket);
        }
        ReportIfDone();
    }

    /// <summary>Once completed and the loop has stopped: the buffers go back and the transport hears, once.</summary>
    void ReportIfDone()
    {
        if (Volatile.Read(ref _completeRequested) == 0)
        {
            return;
        }
        lock (_sync)
        {
            if (_looping || Interlocked.Exchange(ref _reported, 1) != 0)
            {
                return;
            }
        }
        LeanSocketConnection.Return(_buffer);
        _buffer = null;
        _written = 0;
        transport.HalfCompleted();
    }
}
