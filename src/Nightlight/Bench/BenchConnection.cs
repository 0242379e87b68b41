using System.Buffers.Binary;
using System.Net.Sockets;
using System.Text;

namespace Nightlight.Cli.Bench;

/// <summary>
/// One simulated device's MQTT 3.1.1 connection, as lean as the benchmark needs: connect, subscribe to one topic,
/// publish at QoS 0, receive QoS 0 or 1 publishes, ping. The load generator shares the two cores with the broker and the
/// server it measures; a full client per device (MQTTnet: its own receive loop, keep-alive loop, packet dispatcher
/// and send lock) cost more CPU than the server under test. Whatever this sends is plain MQTT that any broker takes.
/// </summary>
public sealed class BenchConnection : IDisposable
{
    const byte Connect = 0x10, ConnAck = 0x20, Publish = 0x30, PubAck = 0x40, Subscribe = 0x82, SubAck = 0x90, PingReq = 0xC0, PingResp = 0xD0, Disconnect = 0xE0;

    readonly Socket _socket;
    readonly Action<ReadOnlySpan<byte>> _onPublish;
    readonly Lock _sendGate = new();
    byte[] _buffer = new byte[1024];
    byte[] _acks = new byte[64];
    int _filled;
    TaskCompletionSource<byte[]>? _reply;
    volatile bool _connected;

    BenchConnection(Socket socket, Action<ReadOnlySpan<byte>> onPublish)
    {
        _socket = socket;
        _onPublish = onPublish;
    }

    /// <summary>True from the CONNACK until the connection breaks or is closed.</summary>
    public bool IsConnected => _connected;

    /// <summary>
    /// Connects as <paramref name="clientId"/> (clean session, <paramref name="keepAliveSeconds"/>), subscribes to <paramref name="filter"/>
    /// at <paramref name="subscribeQos"/> (0 or 1), and from then on calls <paramref name="onPublish"/> with the payload of every
    /// publish received. QoS 1 publishes are acknowledged, all those of one socket read in one write.
    /// </summary>
    public static async Task<BenchConnection> OpenAsync(string host, int port, string clientId, string? username, string? password, string filter,
        Action<ReadOnlySpan<byte>> onPublish, CancellationToken cancellationToken, ushort keepAliveSeconds = 60, byte subscribeQos = 0,
        System.Net.IPAddress? localAddress = null)
    {
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        var connection = new BenchConnection(socket, onPublish);
        try
        {
            if (localAddress is not null)
            {
                // A source address of its own (127.0.0.x): each has its own range of ephemeral ports. The port is chosen
                // at connect (IP_BIND_ADDRESS_NO_PORT), where only the whole address pair must be unique.
                if (OperatingSystem.IsLinux())
                {
                    socket.SetRawSocketOption(0, 24, BitConverter.GetBytes(1));
                }
                socket.Bind(new System.Net.IPEndPoint(localAddress, 0));
            }
            await socket.ConnectAsync(host, port, cancellationToken);
            _ = connection.ReceiveLoopAsync();
            var connAck = await connection.RequestAsync(ConnectPacket(clientId, username, password, keepAliveSeconds), cancellationToken);
            if (connAck[0] != ConnAck || connAck.Length < 4 || connAck[3] != 0)
            {
                throw new IOException($"{clientId}: the broker refused the connection (CONNACK return code {(connAck.Length >= 4 ? connAck[3] : -1)})");
            }
            connection._connected = true;
            var subAck = await connection.RequestAsync(SubscribePacket(filter, subscribeQos), cancellationToken);
            if (subAck[0] != SubAck || subAck.Length < 5 || subAck[4] == 0x80)
            {
                throw new IOException($"{clientId}: the broker refused the subscription to {filter}");
            }
            return connection;
        }
        catch
        {
            connection.Dispose();
            throw;
        }
    }

    /// <summary>Subscribes to one more filter at QoS 0.</summary>
    public async Task SubscribeAsync(string filter, CancellationToken cancellationToken)
    {
        var subAck = await RequestAsync(SubscribePacket(filter, 0), cancellationToken);
        if (subAck[0] != SubAck || subAck.Length < 5 || subAck[4] == 0x80)
        {
            throw new IOException($"the broker refused the subscription to {filter}");
        }
    }

    /// <summary>A complete QoS 0 PUBLISH packet, built once and sent many times.</summary>
    public static byte[] PublishPacket(string topic, ReadOnlySpan<byte> payload)
    {
        var topicBytes = Encoding.UTF8.GetBytes(topic);
        var body = new byte[2 + topicBytes.Length + payload.Length];
        BinaryPrimitives.WriteUInt16BigEndian(body, (ushort)topicBytes.Length);
        topicBytes.CopyTo(body, 2);
        payload.CopyTo(body.AsSpan(2 + topicBytes.Length));
        return Packet(Publish, body);
    }

    /// <summary>Sends a whole packet; false when the connection is gone.</summary>
    public bool TrySend(ReadOnlySpan<byte> packet)
    {
        if (!_connected)
        {
            return false;
        }
        try
        {
            lock (_sendGate)
            {
                while (!packet.IsEmpty)
                {
                    packet = packet[_socket.Send(packet)..];
                }
            }
            return true;
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            _connected = false;
            return false;
        }
    }

    /// <summary>Tells the broker the device is still there (due once every keep-alive period).</summary>
    public bool Ping() => TrySend([PingReq, 0]);

    async Task<byte[]> RequestAsync(byte[] packet, CancellationToken cancellationToken)
    {
        var reply = new TaskCompletionSource<byte[]>(TaskCreationOptions.RunContinuationsAsynchronously);
        Volatile.Write(ref _reply, reply);
        lock (_sendGate)
        {
            _socket.Send(packet);
        }
        return await reply.Task.WaitAsync(TimeSpan.FromSeconds(30), cancellationToken);
    }

    async Task ReceiveLoopAsync()
    {
        try
        {
            while (true)
            {
                if (_filled == _buffer.Length)
                {
                    Array.Resize(ref _buffer, _buffer.Length * 2);
                }
                var read = await _socket.ReceiveAsync(_buffer.AsMemory(_filled), SocketFlags.None);
                if (read == 0)
                {
                    break;
                }
                _filled += read;
                var used = Dispatch(_buffer.AsSpan(0, _filled));
                _buffer.AsSpan(used, _filled - used).CopyTo(_buffer);
                _filled -= used;
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException)
        {
            // The connection is gone: IsConnected says so, and readings still unanswered count as lost.
        }
        _connected = false;
        Volatile.Read(ref _reply)?.TrySetException(new IOException("the broker closed the connection"));
    }

    /// <summary>Handles every whole packet at the front of <paramref name="data"/>; returns the bytes used.</summary>
    int Dispatch(ReadOnlySpan<byte> data)
    {
        var used = 0;
        var acks = 0;
        while (TryFrame(data[used..], out var header, out var bodyStart, out var bodyLength))
        {
            var body = data.Slice(used + bodyStart, bodyLength);
            switch (header & 0xF0)
            {
                case Publish:
                    // Topic length, topic, packet identifier (QoS 1: the subscription asks for no more), payload.
                    var topicLength = BinaryPrimitives.ReadUInt16BigEndian(body);
                    var qos = (header >> 1) & 0x03;
                    if (qos > 0)
                    {
                        if (_acks.Length < (acks + 1) * 4)
                        {
                            Array.Resize(ref _acks, _acks.Length * 2);
                        }
                        _acks[acks * 4] = PubAck;
                        _acks[acks * 4 + 1] = 2;
                        body.Slice(2 + topicLength, 2).CopyTo(_acks.AsSpan(acks * 4 + 2));
                        acks++;
                    }
                    _onPublish(body[(2 + topicLength + (qos > 0 ? 2 : 0))..]);
                    break;
                case PingResp:
                    break;
                default:
                    Volatile.Read(ref _reply)?.TrySetResult(data.Slice(used, bodyStart + bodyLength).ToArray());
                    break;
            }
            used += bodyStart + bodyLength;
        }
        if (acks > 0)
        {
            TrySend(_acks.AsSpan(0, acks * 4));
        }
        return used;
    }

    static bool TryFrame(ReadOnlySpan<byte> data, out byte header, out int bodyStart, out int bodyLength)
    {
        header = 0;
        bodyStart = bodyLength = 0;
        if (data.Length < 2)
        {
            return false;
        }
        header = data[0];
        var multiplier = 1;
        for (var i = 1; i <= 4; i++)
        {
            if (i >= data.Length)
            {
                return false;
            }
            bodyLength += (data[i] & 0x7F) * multiplier;
            multiplier *= 128;
            if ((data[i] & 0x80) == 0)
            {
                bodyStart = i + 1;
                return data.Length >= bodyStart + bodyLength;
            }
        }
        throw new IOException("malformed remaining length from the broker");
    }

    static byte[] ConnectPacket(string clientId, string? username, string? password, ushort keepAliveSeconds)
    {
        var body = new List<byte> { 0, 4, (byte)'M', (byte)'Q', (byte)'T', (byte)'T', 4 };
        byte flags = 0x02;
        if (username is not null)
        {
            flags |= 0x80;
        }
        if (password is not null)
        {
            flags |= 0x40;
        }
        body.Add(flags);
        body.Add((byte)(keepAliveSeconds >> 8));
        body.Add((byte)keepAliveSeconds);
        AddString(body, clientId);
        if (username is not null)
        {
            AddString(body, username);
        }
        if (password is not null)
        {
            AddString(body, password);
        }
        return Packet(Connect, [.. body]);
    }

    static byte[] SubscribePacket(string filter, byte qos)
    {
        var body = new List<byte> { 0, 1 };
        AddString(body, filter);
        body.Add(qos);
        return Packet(Subscribe, [.. body]);
    }

    static void AddString(List<byte> body, string value)
    {
        var bytes = Encoding.UTF8.GetBytes(value);
        body.Add((byte)(bytes.Length >> 8));
        body.Add((byte)bytes.Length);
        body.AddRange(bytes);
    }

    static byte[] Packet(byte header, byte[] body)
    {
        var length = new List<byte>();
        var remaining = body.Length;
        do
        {
            var digit = (byte)(remaining % 128);
            remaining /= 128;
            length.Add(remaining > 0 ? (byte)(digit | 0x80) : digit);
        }
        while (remaining > 0);
        return [header, .. length, .. body];
    }

    /// <summary>Sends DISCONNECT (so the broker publishes no last will) and closes.</summary>
    public void Close()
    {
        TrySend([Disconnect, 0]);
        Dispose();
    }

    public void Dispose()
    {
        _connected = false;
        _socket.Dispose();
    }
}
