using System.Net.Sockets;
using System.Text;

namespace Nightlight.Tests.Support;

/// <summary>A bare TCP connection that writes whatever bytes a test gives it: the way hostile clients talk.</summary>
public sealed class RawMqtt : IAsyncDisposable
{
    readonly TcpClient _tcp;

    RawMqtt(TcpClient tcp)
    {
        _tcp = tcp;
        Stream = tcp.GetStream();
    }

    /// <summary>Taken once: after <see cref="CloseSending"/> the client no longer counts as connected and would not give it.</summary>
    public NetworkStream Stream { get; }

    public static async Task<RawMqtt> OpenAsync(int port, string host = "127.0.0.1")
    {
        var tcp = new TcpClient(System.Net.IPAddress.Parse(host).AddressFamily) { NoDelay = true };
        await tcp.ConnectAsync(host, port);
        return new RawMqtt(tcp);
    }

    public Task SendAsync(byte[] bytes) => Stream.WriteAsync(bytes).AsTask();

    /// <summary>Closes the sending side only (TCP FIN): the broker's input ends, and this end can still read.</summary>
    public void CloseSending() => _tcp.Client.Shutdown(SocketShutdown.Send);

    /// <summary>Sends an MQTT 3.1.1 CONNECT and waits for CONNACK; returns its return code.</summary>
    public async Task<int> ConnectAsync(string clientId, string? userName = null, string? password = null)
    {
        await SendAsync(Packets.Connect311(clientId, userName, password));
        var connack = await ReadPacketAsync(TimeSpan.FromSeconds(20));
        Assert.True(connack is not null && connack[0] == 0x20, "expected CONNACK");
        return connack![3];
    }

    /// <summary>Reads one whole packet (fixed header included), or null when the broker closed the connection.</summary>
    public async Task<byte[]?> ReadPacketAsync(TimeSpan timeout)
    {
        using var cts = new CancellationTokenSource(timeout);
        var header = new List<byte>();
        var one = new byte[1];
        if (await Stream.ReadAsync(one, cts.Token) == 0)
        {
            return null;
        }
        header.Add(one[0]);
        int remaining = 0, multiplier = 1;
        while (true)
        {
            if (await Stream.ReadAsync(one, cts.Token) == 0)
            {
                return null;
            }
            header.Add(one[0]);
            remaining += (one[0] & 0x7F) * multiplier;
            multiplier *= 128;
            if ((one[0] & 0x80) == 0)
            {
                break;
            }
        }
        var body = new byte[remaining];
        await Stream.ReadExactlyAsync(body, cts.Token);
        return [.. header, .. body];
    }

    /// <summary>True when the broker closes the connection within <paramref name="timeout"/> (anything it sends first is skipped).</summary>
    public async Task<bool> ClosedWithinAsync(TimeSpan timeout)
    {
        using var cts = new CancellationTokenSource(timeout);
        var buffer = new byte[4096];
        try
        {
            while (await Stream.ReadAsync(buffer, cts.Token) > 0)
            {
            }
            return true;
        }
        catch (OperationCanceledException)
        {
            return false;
        }
        catch (IOException)
        {
            return true;
        }
    }

    public ValueTask DisposeAsync()
    {
        _tcp.Dispose();
        return ValueTask.CompletedTask;
    }
}

/// <summary>MQTT 3.1.1 packets built by hand, so tests can also build wrong ones.</summary>
public static class Packets
{
    public static byte[] Frame(byte first, byte[] body) => [first, .. RemainingLength(body.Length), .. body];

    public static byte[] RemainingLength(int length)
    {
        var bytes = new List<byte>();
        do
        {
            var b = (byte)(length % 128);
            length /= 128;
            bytes.Add(length > 0 ? (byte)(b | 0x80) : b);
        }
        while (length > 0);
        return [.. bytes];
    }

    public static byte[] String(string s) => Bytes(Encoding.UTF8.GetBytes(s));

    public static byte[] Bytes(byte[] b) => [(byte)(b.Length >> 8), (byte)b.Length, .. b];

    public static byte[] Connect311(string clientId, string? userName = null, string? password = null)
    {
        byte flags = 0x02;
        if (userName is not null)
        {
            flags |= 0x80;
        }
        if (password is not null)
        {
            flags |= 0x40;
        }
        byte[] body = [.. String("MQTT"), 4, flags, 0, 60, .. String(clientId)];
        if (userName is not null)
        {
            body = [.. body, .. String(userName)];
        }
        if (password is not null)
        {
            body = [.. body, .. String(password)];
        }
        return Frame(0x10, body);
    }

    public static byte[] Publish(string topic, byte[] payload, int qos = 0, ushort packetId = 1) =>
        PublishRawTopic(Encoding.UTF8.GetBytes(topic), payload, qos, packetId);

    public static byte[] PublishRawTopic(byte[] topic, byte[] payload, int qos = 0, ushort packetId = 1)
    {
        byte[] body = qos > 0 ? [.. Bytes(topic), (byte)(packetId >> 8), (byte)packetId, .. payload] : [.. Bytes(topic), .. payload];
        return Frame((byte)(0x30 | (qos << 1)), body);
    }

    public static byte[] Subscribe(string filter, ushort packetId = 1) => Frame(0x82, [(byte)(packetId >> 8), (byte)packetId, .. String(filter), 0]);

    public static byte[] PingReq => [0xC0, 0];

    public static byte[] Disconnect => [0xE0, 0];
}
