using System.Net;
using System.Net.Sockets;

namespace Nightlight.Bench;

/// <summary>
/// A loopback TCP proxy that counts the TCP payload bytes passing each way: what the application protocol puts on
/// the wire, headers and framing included, without the TCP/IP headers of each segment. Counts connections too.
/// </summary>
sealed class CountingProxy : IAsyncDisposable
{
    readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    readonly int _target;
    readonly CancellationTokenSource _stopping = new();
    readonly Task _accepting;
    long _up;
    long _down;
    long _connections;

    public CountingProxy(int target)
    {
        _target = target;
        _listener.Start();
        Port = ((IPEndPoint)_listener.LocalEndpoint).Port;
        _accepting = Task.Run(AcceptAsync);
    }

    public int Port { get; }

    /// <summary>Bytes from the client (the device) to the server or broker.</summary>
    public long Up => Interlocked.Read(ref _up);

    /// <summary>Bytes from the server or broker to the device.</summary>
    public long Down => Interlocked.Read(ref _down);

    public long Connections => Interlocked.Read(ref _connections);

    public void Reset()
    {
        Interlocked.Exchange(ref _up, 0);
        Interlocked.Exchange(ref _down, 0);
        Interlocked.Exchange(ref _connections, 0);
    }

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
            Interlocked.Increment(ref _connections);
            _ = Task.Run(async () =>
            {
                using var server = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
                client.NoDelay = true;
                try
                {
                    await server.ConnectAsync(IPAddress.Loopback, _target, _stopping.Token);
                    await Task.WhenAll(PumpAsync(client, server, up: true), PumpAsync(server, client, up: false));
                }
                catch (Exception) when (_stopping.IsCancellationRequested)
                {
                }
                catch (SocketException)
                {
                }
                finally
                {
                    client.Dispose();
                }
            });
        }
    }

    async Task PumpAsync(Socket from, Socket to, bool up)
    {
        var buffer = new byte[64 * 1024];
        try
        {
            int read;
            while ((read = await from.ReceiveAsync(buffer, SocketFlags.None, _stopping.Token)) > 0)
            {
                Interlocked.Add(ref up ? ref _up : ref _down, read);
                await to.SendAsync(buffer.AsMemory(0, read), SocketFlags.None, _stopping.Token);
            }
            // Half-close: the other direction may still be finishing (a response after the request's FIN).
            to.Shutdown(SocketShutdown.Send);
        }
        catch (Exception e) when (e is SocketException or OperationCanceledException or ObjectDisposedException)
        {
            // A reset on one side ends both.
            from.Close();
            to.Close();
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stopping.CancelAsync();
        _listener.Stop();
        await _accepting;
    }
}
