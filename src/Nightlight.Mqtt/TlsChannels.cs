using System.Buffers;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Net.WebSockets;
using System.Security.Cryptography.X509Certificates;
using MQTTnet;
using MQTTnet.Channel;
using MQTTnet.Exceptions;

namespace Nightlight.Mqtt;

// Our own TLS channels because MQTTnet's give SslStream no chain policy of ours: the handshake's chain build would
// download what a broker's certificate names (AIA issuers, CRLs) and hang a connect on a URL that never answers.
// Our own plain TCP channel because MQTTnet's sets the socket's buffers to its BufferSize (see TcpMqttChannel).

/// <summary>Opens the TCP connection under an MQTT channel, leaving the socket buffers to the kernel.</summary>
public static class MqttSockets
{
    /// <summary>
    /// Connects to <paramref name="tcp"/>'s broker. The receive and send buffers are not set: MQTTnet sets both to its
    /// <c>BufferSize</c> (8 KB, which Linux doubles to 16 KB), and a buffer set by hand turns off the kernel's
    /// autotuning. A server taking thousands of small publishes a second then overran that buffer within milliseconds
    /// of any pause: the kernel dropped what arrived (the "pruned from receive queue" counter of netstat -s), the
    /// broker's resends backed off for seconds, and the link stalled until a keep-alive timed out. Left alone, the
    /// buffers start at the kernel's defaults and grow with the traffic.
    /// </summary>
    public static async Task<Socket> ConnectAsync(MqttClientTcpOptions tcp, TimeSpan sendTimeout, CancellationToken cancellationToken)
    {
        var socket = tcp.AddressFamily == AddressFamily.Unspecified
            ? new Socket(SocketType.Stream, ProtocolType.Tcp)
            : new Socket(tcp.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            socket.NoDelay = tcp.NoDelay;
            socket.SendTimeout = (int)sendTimeout.TotalMilliseconds;
            if (tcp.LingerState is { } linger)
            {
                socket.LingerState = linger;
            }
            if (tcp.DualMode is { } dualMode)
            {
                socket.DualMode = dualMode;
            }
            if (tcp.LocalEndpoint is { } local)
            {
                socket.Bind(local);
            }
            await socket.ConnectAsync(tcp.RemoteEndpoint, cancellationToken).ConfigureAwait(false);
            return socket;
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }
}

/// <summary>
/// An MQTT channel over one stream that owns its socket: reads and writes it, and ends the connection by disposing it.
/// <paramref name="name"/> names the connection in errors ("TCP", "TLS"). With <paramref name="unwrapSocketErrors"/>, a
/// socket error arrives as the <see cref="SocketException"/> itself, as from MQTTnet's own TCP channel, whose adapter
/// tells a lost connection by it.
/// </summary>
abstract class StreamMqttChannel(string name, bool unwrapSocketErrors) : IMqttChannel
{
    Stream? _stream;

    public abstract X509Certificate2? ClientCertificate { get; }

    public EndPoint? RemoteEndPoint { get; private set; }

    public EndPoint? LocalEndPoint { get; private set; }

    public abstract bool IsSecureConnection { get; }

    public abstract Task ConnectAsync(CancellationToken cancellationToken);

    /// <summary>Called by <see cref="ConnectAsync"/> once <paramref name="stream"/> over <paramref name="socket"/> is ready.</summary>
    protected void Open(Stream stream, Socket socket)
    {
        RemoteEndPoint = socket.RemoteEndPoint;
        LocalEndPoint = socket.LocalEndPoint;
        _stream = stream;
    }

    public Task DisconnectAsync(CancellationToken cancellationToken)
    {
        Dispose();
        return Task.CompletedTask;
    }

    public async Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken)
    {
        if (_stream is not { } stream)
        {
            return 0;
        }
        try
        {
            return await stream.ReadAsync(buffer.AsMemory(offset, count), cancellationToken).ConfigureAwait(false);
        }
        catch (ObjectDisposedException)
        {
            return 0; // Closed by this side: the end of the connection, as a zero-byte read says.
        }
        catch (IOException e) when (unwrapSocketErrors && e.InnerException is SocketException socket)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(socket).Throw();
            throw;
        }
    }

    public async Task WriteAsync(ReadOnlySequence<byte> buffer, bool isEndOfPacket, CancellationToken cancellationToken)
    {
        var stream = _stream ?? throw new MqttCommunicationException($"The {name} connection is closed.");
        try
        {
            foreach (var segment in buffer)
            {
                await stream.WriteAsync(segment, cancellationToken).ConfigureAwait(false);
            }
        }
        catch (ObjectDisposedException)
        {
            throw new MqttCommunicationException($"The {name} connection is closed.");
        }
        catch (IOException e) when (unwrapSocketErrors && e.InnerException is SocketException socket)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(socket).Throw();
            throw;
        }
    }

    /// <summary>Ends the connection: the stream owns the socket.</summary>
    public virtual void Dispose() => Interlocked.Exchange(ref _stream, null)?.Dispose();
}

/// <summary>MQTT over plain TCP, on a socket whose buffers the kernel sizes (see <see cref="MqttSockets.ConnectAsync"/>).</summary>
sealed class TcpMqttChannel(MqttClientTcpOptions tcp, TimeSpan sendTimeout) : StreamMqttChannel("TCP", unwrapSocketErrors: true)
{
    public override X509Certificate2? ClientCertificate => null;

    public override bool IsSecureConnection => false;

    public override async Task ConnectAsync(CancellationToken cancellationToken)
    {
        var socket = await MqttSockets.ConnectAsync(tcp, sendTimeout, cancellationToken).ConfigureAwait(false);
        Open(new NetworkStream(socket, ownsSocket: true), socket);
    }
}

/// <summary>MQTT over TCP and TLS, the broker's certificate checked as <see cref="ClientTlsSettings"/> says.</summary>
sealed class TlsMqttChannel(MqttClientTcpOptions tcp, TimeSpan sendTimeout, ClientTlsSettings tls) : StreamMqttChannel("TLS", unwrapSocketErrors: false)
{
    BrokerCertificateCheck? _check;

    public override X509Certificate2? ClientCertificate => _check?.ClientCertificate;

    public override bool IsSecureConnection => true;

    public override async Task ConnectAsync(CancellationToken cancellationToken)
    {
        var broker = tcp.RemoteEndpoint;
        var socket = await MqttSockets.ConnectAsync(tcp, sendTimeout, cancellationToken).ConfigureAwait(false);
        BrokerCertificateCheck? check = null;
        try
        {
            var host = tcp.TlsOptions?.TargetHost is { Length: > 0 } targetHost ? targetHost : broker switch
            {
                DnsEndPoint dns => dns.Host,
                IPEndPoint ip => ip.Address.ToString(),
                _ => throw new NotSupportedException($"TLS to a broker at {broker} is not supported."),
            };
            check = tls.Begin(host);
            var stream = new SslStream(new NetworkStream(socket, ownsSocket: true));
            try
            {
                await stream.AuthenticateAsClientAsync(check.Options, cancellationToken).ConfigureAwait(false);
            }
            catch (Exception e)
            {
                await stream.DisposeAsync().ConfigureAwait(false);
                var explained = check.Explain(e);
                if (explained == e)
                {
                    throw;
                }
                throw explained;
            }
            Open(stream, socket);
            _check = check;
        }
        catch
        {
            check?.Dispose();
            socket.Dispose();
            throw;
        }
    }

    public override void Dispose()
    {
        base.Dispose();
        Interlocked.Exchange(ref _check, null)?.Dispose();
    }
}

/// <summary>MQTT over secure WebSocket (<c>wss://</c>), the broker's certificate checked as <see cref="ClientTlsSettings"/> says.</summary>
sealed class SecureWebSocketMqttChannel(MqttClientWebSocketOptions options, ClientTlsSettings tls) : IMqttChannel
{
    ClientWebSocket? _socket;
    HttpMessageInvoker? _http;
    BrokerCertificateCheck? _check;

    public X509Certificate2? ClientCertificate => _check?.ClientCertificate;

    public EndPoint? RemoteEndPoint { get; private set; }

    public EndPoint? LocalEndPoint => null;

    public bool IsSecureConnection => true;

    public async Task ConnectAsync(CancellationToken cancellationToken)
    {
        var uri = new Uri(options.Uri);
        var check = tls.Begin(uri.IdnHost);
        // The TLS settings go to the HTTP handler: ClientWebSocket's own options have no chain policy.
        var http = new HttpMessageInvoker(new SocketsHttpHandler { SslOptions = check.Options });
        var socket = new ClientWebSocket();
        try
        {
            foreach (var subProtocol in options.SubProtocols ?? [])
            {
                socket.Options.AddSubProtocol(subProtocol);
            }
            foreach (var (name, value) in options.RequestHeaders ?? new Dictionary<string, string>())
            {
                socket.Options.SetRequestHeader(name, value);
            }
            socket.Options.KeepAliveInterval = options.KeepAliveInterval;
            try
            {
                await socket.ConnectAsync(uri, http, cancellationToken).ConfigureAwait(false);
            }
            catch (Exception e)
            {
                var explained = check.Explain(e);
                if (explained == e)
                {
                    throw;
                }
                throw explained;
            }
        }
        catch
        {
            socket.Dispose();
            http.Dispose();
            check.Dispose();
            throw;
        }
        RemoteEndPoint = new DnsEndPoint(uri.IdnHost, uri.Port);
        _socket = socket;
        _http = http;
        _check = check;
    }

    public async Task DisconnectAsync(CancellationToken cancellationToken)
    {
        if (_socket is { State: WebSocketState.Open } socket)
        {
            await socket.CloseAsync(WebSocketCloseStatus.NormalClosure, "", cancellationToken).ConfigureAwait(false);
        }
        Dispose();
    }

    public async Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken)
    {
        if (_socket is not { } socket)
        {
            return 0;
        }
        var received = await socket.ReceiveAsync(buffer.AsMemory(offset, count), cancellationToken).ConfigureAwait(false);
        return received.MessageType == WebSocketMessageType.Close ? 0 : received.Count;
    }

    public async Task WriteAsync(ReadOnlySequence<byte> buffer, bool isEndOfPacket, CancellationToken cancellationToken)
    {
        var socket = _socket ?? throw new MqttCommunicationException("The WebSocket connection is closed.");
        // MQTT over WebSocket travels in binary messages; a packet may span frames, and the last one ends the message.
        var left = buffer.Length;
        foreach (var segment in buffer)
        {
            left -= segment.Length;
            await socket.SendAsync(segment, WebSocketMessageType.Binary, isEndOfPacket && left == 0, cancellationToken).ConfigureAwait(false);
        }
    }

    public void Dispose()
    {
        Interlocked.Exchange(ref _socket, null)?.Dispose();
        Interlocked.Exchange(ref _http, null)?.Dispose();
        Interlocked.Exchange(ref _check, null)?.Dispose();
    }
}
