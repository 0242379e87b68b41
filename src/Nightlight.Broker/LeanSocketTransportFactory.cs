using System.Net;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Nightlight.Broker;

/// <summary>
/// Kestrel's transport for plain MQTT on <c>Broker:MqttPort</c>: Kestrel binds, dispatches, limits and drains these
/// connections as any other, but each is a <see cref="LeanSocketConnection"/> instead of Kestrel's socket connection,
/// which keeps two pipes, their segments and two loops per connection (about 2.2 KB of the 8.5 KB an idle device
/// took). Every other endpoint (HTTP, WebSocket, TLS) stays on Kestrel's own socket transport.
/// </summary>
sealed partial class LeanSocketTransportFactory(IOptions<BrokerOptions> options, ILogger<LeanSocketTransportFactory> logger)
    : IConnectionListenerFactory, IConnectionListenerFactorySelector
{
    /// <summary>Connections waiting to be accepted, as Kestrel's default.</summary>
    const int Backlog = 512;

    public bool CanBind(EndPoint endpoint) => endpoint is IPEndPoint ip && ip.Port == options.Value.MqttPort;

    public ValueTask<IConnectionListener> BindAsync(EndPoint endpoint, CancellationToken cancellationToken = default)
    {
        var ip = (IPEndPoint)endpoint;
        var socket = new Socket(ip.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            if (ip.Address.Equals(IPAddress.IPv6Any))
            {
                socket.DualMode = true;
            }
            socket.Bind(ip);
            socket.Listen(Backlog);
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.AddressAlreadyInUse)
        {
            socket.Dispose();
            // Kestrel words this one itself ("Failed to bind to address ...: address already in use.").
            throw new AddressInUseException(e.Message, e);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
        return new ValueTask<IConnectionListener>(new Listener(socket, this));
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "Accepting MQTT connections failed ({Error}: {Reason}); retrying")]
    partial void LogAcceptFailed(SocketError error, string reason);

    sealed class Listener(Socket socket, LeanSocketTransportFactory factory) : IConnectionListener
    {
        long _lastFailure = long.MinValue / 2;

        public EndPoint EndPoint { get; } = socket.LocalEndPoint!;

        // Pooled: under a burst of connects, every accept that waits would leave a state machine behind.
        [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
        public async ValueTask<ConnectionContext?> AcceptAsync(CancellationToken cancellationToken = default)
        {
            while (true)
            {
                Socket accepted;
                try
                {
                    accepted = await socket.AcceptAsync(cancellationToken).ConfigureAwait(false);
                }
                catch (ObjectDisposedException)
                {
                    // Unbound: Kestrel stops accepting on a null.
                    return null;
                }
                catch (SocketException e) when (e.SocketErrorCode == SocketError.OperationAborted)
                {
                    return null;
                }
                catch (SocketException e) when (e.SocketErrorCode is SocketError.ConnectionReset or SocketError.ConnectionAborted)
                {
                    // The client gave up while it waited in the backlog.
                    continue;
                }
                catch (SocketException e)
                {
                    // Out of file descriptors, most likely: say so once a minute and try again shortly, instead of
                    // spinning or stopping for good.
                    var now = Environment.TickCount64;
                    if (now - _lastFailure > 60_000)
                    {
                        _lastFailure = now;
                        factory.LogAcceptFailed(e.SocketErrorCode, e.Message);
                    }
                    await Task.Delay(100, cancellationToken).ConfigureAwait(false);
                    continue;
                }
                accepted.NoDelay = true;
                return new LeanSocketConnection(accepted);
            }
        }

        public ValueTask UnbindAsync(CancellationToken cancellationToken = default)
        {
            socket.Dispose();
            return ValueTask.CompletedTask;
        }

        public ValueTask DisposeAsync()
        {
            socket.Dispose();
            return ValueTask.CompletedTask;
        }
    }
}
