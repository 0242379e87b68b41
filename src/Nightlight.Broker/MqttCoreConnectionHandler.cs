using System.Net;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.AspNetCore.Http.Connections.Features;
using Microsoft.AspNetCore.Http.Features;
using Nightlight.Broker.Core;
using Nightlight.Broker.Core.Engine;

namespace Nightlight.Broker;

/// <summary>
/// Hands each Kestrel connection of an MQTT listener (TCP, TLS, WebSocket at <c>/mqtt</c>) to the broker core, after
/// <c>Broker:MaxConnectRate</c> had its say. The listener's name and the peer decide, in <see cref="BrokerAccess"/>,
/// whether the client may connect without credentials.
/// </summary>
sealed class MqttCoreConnectionHandler(MqttBroker broker, ConnectionRateLimit connectRate) : ConnectionHandler
{
    public override Task OnConnectedAsync(ConnectionContext connection)
    {
        if (!connectRate.TryAdmit(connection.RemoteEndPoint))
        {
            // Closed before a byte is read: no CONNECT parsing, no password hashing for a flood.
            connection.Abort(new ConnectionAbortedException("Broker:MaxConnectRate"));
            return Task.CompletedTask;
        }
        // The broker stopping ends the connection as a shutdown. Not ApplicationStopping: Ctrl+C fires that before
        // the clients in this process (nightlight up's device) have stopped, and they would see their broker vanish.
        // Not ConnectionClosed: Kestrel fires that when the client hangs up, and whole packets sent just before
        // (a PUBLISH, then DISCONNECT) must still be read.
        return broker.RunConnectionAsync(connection.Transport, Describe(connection), broker.Stopping);
    }

    static ClientEndpoint Describe(ConnectionContext connection)
    {
        string listener;
        System.Security.Cryptography.X509Certificates.X509Certificate2? certificate = null;
        if (connection.Features.Get<IHttpContextFeature>()?.HttpContext is { } http)
        {
            // MQTT over WebSocket: messages are binary, and TLS (if any) belongs to the HTTPS request.
            if (connection.Features.Get<ITransferFormatFeature>() is { } format)
            {
                format.ActiveFormat = TransferFormat.Binary;
            }
            listener = http.Request.IsHttps ? "wss" : "ws";
            certificate = http.Connection.ClientCertificate;
        }
        else if (connection.Features.Get<ITlsConnectionFeature>() is { } tls)
        {
            listener = "tls";
            certificate = tls.ClientCertificate;
        }
        else
        {
            listener = "tcp";
        }
        var remote = connection.RemoteEndPoint as IPEndPoint;
        var address = remote?.Address is { IsIPv4MappedToIPv6: true } mapped ? new IPEndPoint(mapped.MapToIPv4(), remote.Port) : remote;
        return new ClientEndpoint(listener, address?.ToString() ?? connection.ConnectionId, address is not null && IPAddress.IsLoopback(address.Address), certificate);
    }
}
