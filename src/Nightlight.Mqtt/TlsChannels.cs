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

/// <summary>MQTT over TCP and TLS, the broker's certificate checked as <see cref="ClientTlsSettings"/> says.</summary>
sealed class TlsMqttChannel(MqttClientTcpOptions tcp, TimeSpan sendTimeout, ClientTlsSettings tls) : IMqttChannel
{
    SslStream? _stream;
    BrokerCertificateCheck? _check;

    public X509Certificate2? ClientCertificate => _check?.ClientCertificate;

    public EndPoint? RemoteEndPoint { get; private set; }

    public EndPoint? LocalEndPoint { get; private set; }

    public bool IsSecureConnection => true;

    public async Task ConnectAsync(CancellationToken cancellationToken)
    {
        var broker = tcp.RemoteEndpoint;
        var socket = tcp.AddressFamily == AddressFamily.Unspecified
            ? new Socket(SocketType.Stream, ProtocolType.Tcp)
            : new Socket(tcp.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        BrokerCertificateCheck? check = null;
        try
        {
            socket.NoDelay = tcp.NoDelay;
            socket.ReceiveBufferSize = tcp.BufferSize;
            socket.SendBufferSize = tcp.BufferSize;
            socket.SendTimeout = (int)sendTimeout.TotalMilliseconds;
            if (tcp.LingerState is { } linger)
            {
                socket.LingerState = linger;
            }
            await socket.ConnectAsync(broker, cancellationToken).ConfigureAwait(false);
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
            RemoteEndPoint = socket.RemoteEndPoint;
            LocalEndPoint = socket.LocalEndPoint;
            _stream = stream;
            _check = check;
        }
        catch
        {
            check?.Dispose();
            socket.Dispose();
            throw;
        }
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
    }

    public async Task WriteAsync(ReadOnlySequence<byte> buffer, bool isEndOfPacket, CancellationToken cancellationToken)
    {
        var stream = _stream ?? throw new MqttCommunicationException("The TLS connection is closed.");
        try
        {
            foreach (var segment in buffer)
            {
                await stream.WriteAsync(segment, cancellationToken).ConfigureAwait(false);
            }
        }
        catch (ObjectDisposedException)
        {
            throw new MqttCommunicationException("The TLS connection is closed.");
        }
    }

    public void Dispose()
    {
        // The stream owns the socket.
        Interlocked.Exchange(ref _stream, null)?.Dispose();
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
