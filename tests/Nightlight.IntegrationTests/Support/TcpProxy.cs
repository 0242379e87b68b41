using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;

namespace Nightlight.Tests.Support;

/// <summary>
/// A TCP proxy on a free loopback port in front of a broker, so a test can take the network away from a device:
/// <see cref="Cut"/> resets every connection and refuses new ones until <see cref="Restore"/>.
/// </summary>
public sealed class TcpProxy : IAsyncDisposable
{
    readonly TcpListener _listener;
    readonly int _target;
    readonly CancellationTokenSource _stopping = new();
    readonly ConcurrentDictionary<Socket, byte> _sockets = new();
    readonly Task _accepting;
    volatile bool _cut;

    TcpProxy(int target, int listenPort)
    {
        _target = target;
        _listener = new TcpListener(IPAddress.Loopback, listenPort);
        _listener.Start();
        Port = ((IPEndPoint)_listener.LocalEndpoint).Port;
        _accepting = Task.Run(AcceptAsync);
    }

    public int Port { get; }

    public string Url => $"mqtt://127.0.0.1:{Port}";

    /// <summary>Connections accepted and forwarded so far.</summary>
    public int Connections { get; private set; }

    /// <summary>Starts forwarding <paramref name="listenPort"/> (0: a free one) to <paramref name="targetPort"/>.</summary>
    public static TcpProxy Start(int targetPort, int listenPort = 0) => new(targetPort, listenPort);

    /// <summary>Resets every open connection and refuses new ones.</summary>
    public void Cut()
    {
        _cut = true;
        foreach (var socket in _sockets.Keys)
        {
            Close(socket);
        }
    }

    /// <summary>Accepts and forwards connections again.</summary>
    public void Restore() => _cut = false;

    async Task AcceptAsync()
    {
        while (!_stopping.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await _listener.AcceptSocketAsync(_stopping.Token);
            }
            catch (Exception) when (_stopping.IsCancellationRequested)
            {
                return;
            }
            if (_cut)
            {
                Close(client);
                continue;
            }
            var upstream = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
            try
            {
                await upstream.ConnectAsync(IPAddress.Loopback, _target, _stopping.Token);
            }
            catch (SocketException)
            {
                Close(client);
                upstream.Dispose();
                continue;
            }
            client.NoDelay = true;
            Connections++;
            _sockets[client] = 0;
            _sockets[upstream] = 0;
            _ = PumpAsync(client, upstream);
            _ = PumpAsync(upstream, client);
        }
    }

    async Task PumpAsync(Socket from, Socket to)
    {
        var buffer = new byte[64 * 1024];
        try
        {
            while (true)
            {
                var read = await from.ReceiveAsync(buffer, SocketFlags.None, _stopping.Token);
                if (read == 0 || _cut)
                {
                    break;
                }
                await to.SendAsync(buffer.AsMemory(0, read), SocketFlags.None, _stopping.Token);
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or OperationCanceledException)
        {
            // The other direction or Cut closed the pair.
        }
        Close(from);
        Close(to);
    }

    void Close(Socket socket)
    {
        _sockets.TryRemove(socket, out _);
        try
        {
            // A reset, not a polite close: what a dropped link or a dead router looks like to both ends.
            socket.LingerState = new LingerOption(true, 0);
            socket.Close();
        }
        catch (ObjectDisposedException)
        {
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stopping.CancelAsync();
        _listener.Stop();
        Cut();
        await _accepting;
        _stopping.Dispose();
    }
}
