using System.Buffers;
using System.Net;
using System.Security.Cryptography.X509Certificates;
using MQTTnet.Adapter;
using MQTTnet.Channel;
using MQTTnet.Diagnostics.Logger;
using MQTTnet.Exceptions;
using MQTTnet.Formatter;
using MQTTnet.Implementations;
using MQTTnet;

namespace Nightlight.Mqtt;

/// <summary>
/// Makes MQTTnet clients whose TCP connections write and read in blocks. MQTTnet's client makes one socket write per
/// packet and two or three socket reads per packet (fixed header, length, body); replaying a backlog at QoS 1, or
/// answering thousands of devices on one connection, spent about half its CPU in those system calls. Here packets
/// written while the previous socket write is still under way go out together in the next one, and reads take what
/// the socket has. The bytes on the wire are the same, in the same order. WebSocket connections are not buffered.
/// TCP connections use our own channels: plain ones leave the socket buffers to the kernel (see
/// <see cref="MqttSockets.ConnectAsync"/>), and ones with TLS (MQTTnet's <c>UseTls</c>, or a <c>wss://</c> address)
/// check brokers with <see cref="ClientTlsSettings"/>, not MQTTnet's TLS options.
/// </summary>
public sealed class BufferedClientAdapterFactory : IMqttClientAdapterFactory
{
    readonly int _readBufferSize;
    readonly ClientTlsSettings? _tls;

    /// <summary>
    /// <paramref name="readBufferSize"/>: the most bytes read from the socket at once, per connection. Each connection
    /// starts with 1 KB and doubles up to this while reads keep filling it, so a fleet of quiet devices stays small.
    /// <paramref name="tls"/>: how TLS connections check brokers and show a client certificate; null refuses TLS.
    /// </summary>
    public BufferedClientAdapterFactory(int readBufferSize = 16 * 1024, ClientTlsSettings? tls = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(readBufferSize, 256);
        _readBufferSize = readBufferSize;
        _tls = tls;
    }

    /// <summary>Creates a new client that uses this factory's connections.</summary>
    public IMqttClient CreateClient() => new MqttClientFactory().CreateMqttClient(this);

    /// <inheritdoc />
    public IMqttChannelAdapter CreateClientAdapter(MqttClientOptions options, MqttPacketInspector packetInspector, IMqttNetLogger logger) =>
        CreateClientAdapter(options, packetInspector, logger, out _);

    /// <summary>As <see cref="CreateClientAdapter(MqttClientOptions, MqttPacketInspector, IMqttNetLogger)"/>, with the block-writing channel (null over WebSocket).</summary>
    internal IMqttChannelAdapter CreateClientAdapter(MqttClientOptions options, MqttPacketInspector packetInspector, IMqttNetLogger logger,
        out BufferedMqttChannel? buffered)
    {
        ArgumentNullException.ThrowIfNull(options);
        buffered = null;
        IMqttChannel channel = options.ChannelOptions switch
        {
            MqttClientTcpOptions { TlsOptions.UseTls: true } tcp =>
                buffered = new BufferedMqttChannel(new TlsMqttChannel(tcp, options.Timeout, RequireTls()), _readBufferSize),
            MqttClientTcpOptions tcp => buffered = new BufferedMqttChannel(new TcpMqttChannel(tcp, options.Timeout), _readBufferSize),
            MqttClientWebSocketOptions webSocket when webSocket.Uri.StartsWith("wss://", StringComparison.OrdinalIgnoreCase) =>
                new SecureWebSocketMqttChannel(webSocket, RequireTls()),
            MqttClientWebSocketOptions webSocket => new MqttWebSocketChannel(webSocket),
            var other => throw new NotSupportedException($"MQTT channel options of type {other?.GetType().Name ?? "null"} are not supported."),
        };
        var formatter = new MqttPacketFormatterAdapter(options.ProtocolVersion, new MqttBufferWriter(options.WriterBufferSize, options.WriterBufferSizeMax));
        return new MqttChannelAdapter(channel, formatter, logger)
        {
            AllowPacketFragmentation = options.AllowPacketFragmentation,
            PacketInspector = packetInspector,
        };
    }

    ClientTlsSettings RequireTls() =>
        _tls ?? throw new NotSupportedException("TLS connections need the ClientTlsSettings of this factory: MQTTnet's own TLS channels download what a broker's certificate names.");
}

/// <summary>
/// The channel behind <see cref="BufferedClientAdapterFactory"/>. A write copies the packet into the pending block. When
/// no socket write is under way, the writer then writes the block itself; otherwise it returns, and the flush under way
/// writes what is pending once its socket write is done, on the thread pool. So a packet never waits for another except
/// while a socket write is under way, and a lone packet costs no thread hop: on a busy machine the thread pool may be slow
/// to run one. A write that fails is reported to the next writer and to every later
/// one, as MQTTnet's own channel reports a closed connection. MQTTnet's adapter sends one packet at a time and reads
/// from one loop, which this relies on.
/// </summary>
sealed class BufferedMqttChannel(IMqttChannel inner, int readBufferSize) : IMqttChannel
{
    // Writers wait once this much is pending: memory stays bounded when the socket is slower than the publishers.
    const int MaxPendingBytes = 1024 * 1024;
    // A hold keeps at most this much back; more is written at once.
    const int MaxHeldBytes = 32 * 1024;
    static readonly TimeSpan DisconnectFlushTimeout = TimeSpan.FromSeconds(2);

    byte[] _readBuffer = new byte[Math.Min(1024, readBufferSize)];
    int _readStart;
    int _readEnd;

    readonly Lock _gate = new();
    ArrayBufferWriter<byte> _pending = new(512);
    ArrayBufferWriter<byte> _spare = new(512);
    Task _flushing = Task.CompletedTask;
    bool _flushRunning;
    // Flushes started so far: a flush's number says whether it is still the newest.
    long _flushes;
    Exception? _failure;
    TaskCompletionSource? _room;
    // Holds taken (Hold): while any is, complete packets wait in the pending block instead of starting a write.
    int _holds;

    public X509Certificate2 ClientCertificate => inner.ClientCertificate;

    public EndPoint RemoteEndPoint => inner.RemoteEndPoint;

    public EndPoint LocalEndPoint => inner.LocalEndPoint;

    public bool IsSecureConnection => inner.IsSecureConnection;

    public Task ConnectAsync(CancellationToken cancellationToken) => inner.ConnectAsync(cancellationToken);

    public async Task DisconnectAsync(CancellationToken cancellationToken)
    {
        // MQTTnet sends DISCONNECT and then closes: let it reach the socket first, or the broker would publish the
        // last will of a device that left cleanly. A flush that fails has already recorded why.
        WriteHeld();
        Task flushing;
        lock (_gate)
        {
            flushing = _flushing;
        }
        await flushing.WaitAsync(DisconnectFlushTimeout, cancellationToken).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        await inner.DisconnectAsync(cancellationToken).ConfigureAwait(false);
    }

    public Task WriteAsync(ReadOnlySequence<byte> buffer, bool isEndOfPacket, CancellationToken cancellationToken)
    {
        long flush;
        lock (_gate)
        {
            if (_failure is not null)
            {
                return Task.FromException(new MqttCommunicationException("The TCP connection broke while writing.", _failure));
            }
            foreach (var segment in buffer)
            {
                _pending.Write(segment.Span);
            }
            if (!isEndOfPacket || (_holds > 0 && _pending.WrittenCount < MaxHeldBytes))
            {
                return Task.CompletedTask;
            }
            if (_flushRunning)
            {
                if (_pending.WrittenCount < MaxPendingBytes)
                {
                    return Task.CompletedTask;
                }
                _room ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                return _room.Task.WaitAsync(cancellationToken);
            }
            _flushRunning = true;
            flush = ++_flushes;
        }
        StartFlush(flush);
        return Task.CompletedTask;
    }

    /// <summary>
    /// Holds complete packets back (up to <see cref="MaxHeldBytes"/>) until every hold is released, so that packets
    /// written one after another leave in one socket write. The holder must not wait for the broker meanwhile.
    /// </summary>
    public void Hold()
    {
        lock (_gate)
        {
            _holds++;
        }
    }

    /// <summary>Ends a <see cref="Hold"/>; the last one writes what is pending, unless a write is under way that will.</summary>
    public void Release()
    {
        lock (_gate)
        {
            if (--_holds > 0)
            {
                return;
            }
        }
        WriteHeld();
    }

    /// <summary>Writes what is pending now, holds or not: for a writer that is about to wait for the broker.</summary>
    public void WriteHeld()
    {
        long flush;
        lock (_gate)
        {
            if (_flushRunning || _pending.WrittenCount == 0 || _failure is not null)
            {
                return;
            }
            _flushRunning = true;
            flush = ++_flushes;
        }
        StartFlush(flush);
    }

    void StartFlush(long flush)
    {
        // No flush under way: this writer makes the socket write itself, as MQTTnet's own channel does, without waking
        // another thread. Only what other writers add meanwhile goes to a flush loop on the thread pool. A write the
        // socket cannot take at once goes on there too, so the caller never waits for the socket.
        var flushing = FlushAsync(inline: true);
        if (!flushing.IsCompleted)
        {
            lock (_gate)
            {
                // For DisconnectAsync, unless a later flush has started since.
                if (_flushes == flush)
                {
                    _flushing = flushing;
                }
            }
        }
    }

    async Task FlushAsync(bool inline)
    {
        var wrote = false;
        while (true)
        {
            ArrayBufferWriter<byte> block;
            TaskCompletionSource? room;
            lock (_gate)
            {
                if (_pending.WrittenCount == 0)
                {
                    _flushRunning = false;
                    return;
                }
                if (inline && wrote)
                {
                    break;
                }
                block = _pending;
                _pending = _spare;
                room = _room;
                _room = null;
            }
            room?.TrySetResult();
            try
            {
                await inner.WriteAsync(new ReadOnlySequence<byte>(block.WrittenMemory), true, CancellationToken.None).ConfigureAwait(false);
            }
            catch (Exception exception)
            {
                lock (_gate)
                {
                    _failure = exception;
                    _flushRunning = false;
                    room = _room;
                    _room = null;
                }
                room?.TrySetException(new MqttCommunicationException("The TCP connection broke while writing.", exception));
                return;
            }
            wrote = true;
            block.ResetWrittenCount();
            lock (_gate)
            {
                _spare = block;
            }
        }
        // More came while this caller wrote: the thread pool writes it, and the caller goes on. This flush ends with it,
        // so DisconnectAsync waits for both.
        await Task.Run(() => FlushAsync(inline: false), CancellationToken.None).ConfigureAwait(false);
    }

    /// <summary>
    /// True when the bytes already read from the socket hold the next MQTT packet whole, so reading it does not wait
    /// for the socket. (MQTTnet's adapter reads packet by packet: between packets, the unread bytes start with one.)
    /// </summary>
    public bool HasWholePacket
    {
        get
        {
            var available = _readEnd - _readStart;
            var length = 0;
            // The fixed header: a type byte, then the remaining length in up to four bytes of seven bits each.
            for (var at = 1; at <= 4 && at < available; at++)
            {
                var b = _readBuffer[_readStart + at];
                length |= (b & 0x7F) << (7 * (at - 1));
                if ((b & 0x80) == 0)
                {
                    return available - at - 1 >= length;
                }
            }
            return false;
        }
    }

    public async Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken)
    {
        if (_readStart == _readEnd)
        {
            if (count >= _readBuffer.Length)
            {
                return await inner.ReadAsync(buffer, offset, count, cancellationToken).ConfigureAwait(false);
            }
            var read = await inner.ReadAsync(_readBuffer, 0, _readBuffer.Length, cancellationToken).ConfigureAwait(false);
            if (read <= 0)
            {
                return read;
            }
            _readStart = 0;
            _readEnd = read;
            if (read == _readBuffer.Length && _readBuffer.Length < readBufferSize)
            {
                // The socket had at least this much waiting: a busy connection, worth larger reads from now on.
                var larger = new byte[Math.Min(readBufferSize, _readBuffer.Length * 2)];
                _readBuffer.AsSpan(0, read).CopyTo(larger);
                _readBuffer = larger;
            }
        }
        var taken = Math.Min(count, _readEnd - _readStart);
        Buffer.BlockCopy(_readBuffer, _readStart, buffer, offset, taken);
        _readStart += taken;
        return taken;
    }

    public void Dispose() => inner.Dispose();
}
