using System.Net.Sockets;
using System.Text;
using System.Threading.Channels;

namespace Nightlight.Tests.Support;

/// <summary>
/// A raw MQTT connection for black-box broker tests: the test sends the bytes it built with <see cref="Wire"/> and
/// expects exact packets back within a timeout. Nothing is answered automatically (no PINGREQ, no acknowledgement), so
/// what the broker sees is only what the test wrote.
/// </summary>
public sealed class WireClient : IAsyncDisposable
{
    /// <summary>How long a packet the test expects may take to come.</summary>
    public static readonly TimeSpan Patience = TimeSpan.FromSeconds(5);

    readonly TcpClient _tcp;
    readonly NetworkStream _stream;
    readonly Channel<Packet?> _received = Channel.CreateUnbounded<Packet?>();
    readonly Task _reading;
    // Packets read ahead of the one a helper waited for (retained messages a broker sent before its SUBACK), handed
    // out before anything newer.
    readonly Queue<Packet> _readAhead = new();
    bool _closed;

    WireClient(TcpClient tcp, Wire wire, string name)
    {
        _tcp = tcp;
        _stream = tcp.GetStream();
        Wire = wire;
        Name = name;
        _reading = Task.Run(ReadLoopAsync);
    }

    public Wire Wire { get; }

    /// <summary>The name failures show (usually the client id).</summary>
    public string Name { get; }

    public static async Task<WireClient> OpenAsync(int port, Wire wire, string name = "client")
    {
        var tcp = new TcpClient { NoDelay = true };
        await tcp.ConnectAsync("127.0.0.1", port);
        return new WireClient(tcp, wire, name);
    }

    /// <summary>Opens a connection, sends CONNECT, and returns it once a successful CONNACK came back.</summary>
    public static async Task<WireClient> ConnectAsync(int port, Wire wire, string clientId, bool clean = true, int keepAlive = 60,
        Will? will = null, Props? properties = null, bool sessionPresent = false, string? userName = null, string? password = null)
    {
        var client = await OpenAsync(port, wire, clientId == "" ? "(empty id)" : clientId);
        var connack = await client.ConnectAsync(wire.Connect(clientId, clean, keepAlive, will, userName, password, properties));
        Assert.True(connack.ReasonCode == 0, $"{client.Name}: CONNECT refused: {connack}");
        Assert.True(connack.SessionPresent == sessionPresent, $"{client.Name}: expected session present {sessionPresent}: {connack}");
        if (!wire.IsV5)
        {
            Assert.True(connack.Bytes.AsSpan().SequenceEqual(Wire.ConnAck311(0, sessionPresent)), $"{client.Name}: CONNACK bytes {Convert.ToHexString(connack.Bytes)}");
        }
        return client;
    }

    /// <summary>Sends a CONNECT and returns the CONNACK.</summary>
    public async Task<Packet> ConnectAsync(byte[] connect)
    {
        await SendAsync(connect);
        return await ExpectAsync(PacketType.ConnAck);
    }

    public async Task SendAsync(byte[] bytes)
    {
        await _stream.WriteAsync(bytes);
        await _stream.FlushAsync();
    }

    /// <summary>The next packet, failing when none comes within <paramref name="timeout"/> or the connection closes.</summary>
    public async Task<Packet> NextAsync(TimeSpan? timeout = null)
    {
        var wait = timeout ?? Patience;
        using var cts = new CancellationTokenSource(wait);
        try
        {
            var packet = await ReceiveAsync(cts.Token);
            Assert.True(packet is not null, $"{Name}: the broker closed the connection while a packet was expected");
            return packet!;
        }
        catch (OperationCanceledException)
        {
            Assert.Fail($"{Name}: no packet within {wait.TotalSeconds:0.#} s");
            throw;
        }
        catch (ChannelClosedException)
        {
            Assert.Fail($"{Name}: the connection is closed; no packet can come");
            throw;
        }
    }

    /// <summary>The next packet, or null when none comes within <paramref name="wait"/>; fails when the connection closes.</summary>
    public async Task<Packet?> TryNextAsync(TimeSpan wait)
    {
        using var cts = new CancellationTokenSource(wait);
        try
        {
            var packet = await ReceiveAsync(cts.Token);
            Assert.True(packet is not null, $"{Name}: the broker closed the connection");
            return packet;
        }
        catch (OperationCanceledException)
        {
            return null;
        }
    }

    /// <summary>Every packet that comes until none has come for <paramref name="quiet"/>.</summary>
    public async Task<List<Packet>> DrainAsync(TimeSpan quiet)
    {
        var packets = new List<Packet>();
        while (await TryNextAsync(quiet) is { } packet)
        {
            packets.Add(packet);
        }
        return packets;
    }

    /// <summary>The next packet, which must be exactly <paramref name="expected"/> byte for byte.</summary>
    public async Task<Packet> ExpectAsync(byte[] expected, TimeSpan? timeout = null)
    {
        var packet = await NextAsync(timeout);
        Assert.True(expected.AsSpan().SequenceEqual(packet.Bytes),
            $"{Name}: expected {Convert.ToHexString(expected)}, got {Convert.ToHexString(packet.Bytes)} ({packet})");
        return packet;
    }

    /// <summary>The next packet, which must be of <paramref name="type"/>.</summary>
    public async Task<Packet> ExpectAsync(PacketType type, TimeSpan? timeout = null)
    {
        var packet = await NextAsync(timeout);
        Assert.True(packet.Type == type, $"{Name}: expected {type}, got {packet}");
        return packet;
    }

    /// <summary>The next packet: an acknowledgement of <paramref name="type"/> for <paramref name="packetId"/> with <paramref name="reasonCode"/>.</summary>
    public async Task<Packet> ExpectAckAsync(PacketType type, int packetId, int reasonCode = 0, TimeSpan? timeout = null)
    {
        var packet = await NextAsync(timeout);
        Assert.True(packet.Type == type && packet.PacketId == packetId && packet.ReasonCode == reasonCode,
            $"{Name}: expected {type} id={packetId} rc=0x{reasonCode:X2}, got {packet}");
        if (!Wire.IsV5)
        {
            // A 3.1.1 acknowledgement has exactly one encoding.
            var first = (byte)(((int)type << 4) | (type == PacketType.PubRel ? 2 : 0));
            Assert.True(packet.Bytes.AsSpan().SequenceEqual(Wire.Frame(first, Wire.U16(packetId))), $"{Name}: {type} is not 4 bytes: {Convert.ToHexString(packet.Bytes)}");
        }
        return packet;
    }

    /// <summary>The next packet: a SUBACK for <paramref name="packetId"/> with exactly these codes.</summary>
    public async Task<Packet> ExpectSubAckAsync(int packetId, params int[] codes)
    {
        var packet = await NextAsync();
        Assert.True(packet.Type == PacketType.SubAck && packet.PacketId == packetId && packet.Codes.SequenceEqual(codes),
            $"{Name}: expected SUBACK id={packetId} [{string.Join(",", codes.Select(c => $"0x{c:X2}"))}], got {packet}");
        if (!Wire.IsV5)
        {
            Assert.True(packet.Bytes.AsSpan().SequenceEqual(Wire.SubAck311(packetId, codes)), $"{Name}: SUBACK bytes {Convert.ToHexString(packet.Bytes)}");
        }
        return packet;
    }

    /// <summary>The next packet: a PUBLISH of <paramref name="payload"/> on <paramref name="topic"/> with this QoS and retain flag.</summary>
    public async Task<Packet> ExpectPublishAsync(string topic, string payload, int qos = 0, bool retain = false, TimeSpan? timeout = null)
    {
        var packet = await NextAsync(timeout);
        Assert.True(packet.Type == PacketType.Publish && packet.Topic == topic && packet.PayloadText == payload && packet.Qos == qos && packet.Retain == retain,
            $"{Name}: expected PUBLISH q{qos}{(retain ? " r" : "")} '{topic}' '{payload}', got {packet}");
        return packet;
    }

    /// <summary>Reads <paramref name="count"/> packets, in whatever order the broker sends them.</summary>
    public async Task<List<Packet>> NextManyAsync(int count, TimeSpan? timeout = null)
    {
        var packets = new List<Packet>();
        for (var i = 0; i < count; i++)
        {
            packets.Add(await NextAsync(timeout));
        }
        return packets;
    }

    /// <summary>Fails when any packet arrives (or the connection closes) within <paramref name="wait"/>.</summary>
    public async Task ExpectNothingAsync(TimeSpan wait)
    {
        using var cts = new CancellationTokenSource(wait);
        try
        {
            var packet = await ReceiveAsync(cts.Token);
            Assert.Fail(packet is null ? $"{Name}: the broker closed the connection; expected it to stay open and quiet" : $"{Name}: expected nothing, got {packet}");
        }
        catch (OperationCanceledException)
        {
        }
    }

    /// <summary>
    /// Waits until the broker closes the connection and returns what it sent first (say, a DISCONNECT with a reason code);
    /// fails when it is still open after <paramref name="timeout"/>.
    /// </summary>
    public async Task<List<Packet>> ExpectClosedAsync(TimeSpan? timeout = null)
    {
        var wait = timeout ?? Patience;
        var before = new List<Packet>();
        using var cts = new CancellationTokenSource(wait);
        try
        {
            while (await ReceiveAsync(cts.Token) is { } packet)
            {
                before.Add(packet);
            }
            return before;
        }
        catch (OperationCanceledException)
        {
            Assert.Fail($"{Name}: the connection is still open after {wait.TotalSeconds:0.#} s (received: {string.Join("; ", before)})");
            throw;
        }
        catch (ChannelClosedException)
        {
            return before;
        }
    }

    /// <summary>
    /// Expects the broker to close the connection for a protocol violation. On MQTT 5 a DISCONNECT before the close must
    /// carry <paramref name="reasonCode"/>; when <paramref name="disconnectRequired"/>, it must come at all.
    /// </summary>
    public async Task ExpectClosedWithAsync(int reasonCode, bool disconnectRequired, TimeSpan? timeout = null)
    {
        var before = await ExpectClosedAsync(timeout);
        if (!Wire.IsV5)
        {
            Assert.True(before.Count == 0, $"{Name}: a 3.1.1 broker closes without a packet, got {string.Join("; ", before)}");
            return;
        }
        var disconnect = before.FirstOrDefault(p => p.Type == PacketType.Disconnect);
        if (disconnect is null)
        {
            Assert.False(disconnectRequired, $"{Name}: closed without a DISCONNECT; expected one with reason code 0x{reasonCode:X2}");
            return;
        }
        Assert.True(disconnect.ReasonCode == reasonCode, $"{Name}: expected DISCONNECT rc=0x{reasonCode:X2}, got {disconnect}");
    }

    /// <summary>
    /// Subscribes and expects the SUBACK to grant <paramref name="granted"/> (defaults to the QoS asked for). Retained
    /// messages may come before the SUBACK (the spec does not order them); they are read next, in the order they came.
    /// </summary>
    public async Task SubscribeAsync(int packetId, string filter, int options, int? granted = null, Props? properties = null)
    {
        await SendAsync(Wire.Subscribe(packetId, properties, (filter, options)));
        var early = new List<Packet>();
        while (true)
        {
            var packet = await NextAsync();
            if (packet.Type == PacketType.Publish && packet.Retain)
            {
                early.Add(packet);
                continue;
            }
            foreach (var p in early)
            {
                _readAhead.Enqueue(p);
            }
            var codes = new[] { granted ?? (options & 3) };
            Assert.True(packet.Type == PacketType.SubAck && packet.PacketId == packetId && packet.Codes.SequenceEqual(codes),
                $"{Name}: expected SUBACK id={packetId} [0x{codes[0]:X2}], got {packet}");
            Assert.True(Wire.IsV5 || packet.Bytes.AsSpan().SequenceEqual(Wire.SubAck311(packetId, codes)), $"{Name}: SUBACK bytes {Convert.ToHexString(packet.Bytes)}");
            return;
        }
    }

    async ValueTask<Packet?> ReceiveAsync(CancellationToken cancellationToken) =>
        _readAhead.TryDequeue(out var packet) ? packet : await _received.Reader.ReadAsync(cancellationToken);

    /// <summary>Publishes and completes the QoS 1 or 2 exchange as a publisher.</summary>
    public async Task PublishAsync(string topic, string payload, int qos = 0, int packetId = 1, bool retain = false, Props? properties = null)
    {
        await SendAsync(Wire.Publish(topic, payload, qos, packetId, retain, properties: properties));
        if (qos == 0)
        {
            return;
        }
        // MQTT 5 brokers may say 0x10, "accepted, but no one is subscribed": a success too.
        var ack = await NextAsync();
        var type = qos == 1 ? PacketType.PubAck : PacketType.PubRec;
        Assert.True(ack.Type == type && ack.PacketId == packetId && ack.ReasonCode is 0x00 or 0x10,
            $"{Name}: expected {type} id={packetId} rc=0x00 or 0x10, got {ack}");
        if (qos == 2)
        {
            await SendAsync(Wire.PubRel(packetId));
            await ExpectAckAsync(PacketType.PubComp, packetId);
        }
    }

    /// <summary>Completes the receiver's side of a delivered QoS 1 or 2 PUBLISH.</summary>
    public async Task AcknowledgeAsync(Packet publish)
    {
        if (publish.Qos == 1)
        {
            await SendAsync(Wire.PubAck(publish.PacketId));
        }
        else if (publish.Qos == 2)
        {
            await SendAsync(Wire.PubRec(publish.PacketId));
            await ExpectAckAsync(PacketType.PubRel, publish.PacketId);
            await SendAsync(Wire.PubComp(publish.PacketId));
        }
    }

    /// <summary>Sends DISCONNECT and waits for the broker to close its side, so what follows sees the session ended.</summary>
    public async Task DisconnectAsync(int reasonCode = 0, Props? properties = null)
    {
        await SendAsync(Wire.Disconnect(reasonCode, properties));
        await ExpectClosedAsync();
    }

    /// <summary>Closes the sending side (FIN) right after what was sent, as a client that is done; replies can still be read.</summary>
    public void CloseSending() => _tcp.Client.Shutdown(SocketShutdown.Send);

    /// <summary>Drops the TCP connection without DISCONNECT: an abnormal end, as a device losing power.</summary>
    public void Drop()
    {
        _tcp.Client.LingerState = new LingerOption(true, 0);
        _tcp.Close();
    }

    async Task ReadLoopAsync()
    {
        try
        {
            while (await ReadPacketAsync() is { } bytes)
            {
                _received.Writer.TryWrite(Packet.Decode(bytes, Wire.Version));
            }
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException or InvalidDataException)
        {
        }
        _closed = true;
        _received.Writer.TryWrite(null);
        _received.Writer.TryComplete();
    }

    async Task<byte[]?> ReadPacketAsync()
    {
        var header = new List<byte>();
        var one = new byte[1];
        if (await _stream.ReadAsync(one) == 0)
        {
            return null;
        }
        header.Add(one[0]);
        int remaining = 0, shift = 0;
        do
        {
            if (await _stream.ReadAsync(one) == 0)
            {
                return null;
            }
            header.Add(one[0]);
            remaining |= (one[0] & 0x7F) << shift;
            shift += 7;
        }
        while ((one[0] & 0x80) != 0);
        var body = new byte[remaining];
        await _stream.ReadExactlyAsync(body);
        return [.. header, .. body];
    }

    public bool IsClosed => _closed;

    public async ValueTask DisposeAsync()
    {
        _tcp.Dispose();
        await _reading;
    }

    public static byte[] Utf8(string s) => Encoding.UTF8.GetBytes(s);
}
