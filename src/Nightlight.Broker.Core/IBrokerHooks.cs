using System.Security.Cryptography.X509Certificates;
using Nightlight.Broker.Core.Packets;

namespace Nightlight.Broker.Core;

/// <summary>Where a connection comes from: the listener that accepted it and the peer.</summary>
/// <param name="Listener">The listener's name for logs and per-listener decisions: <c>tcp</c>, <c>tls</c>, <c>ws</c>, <c>wss</c>, <c>memory</c>.</param>
/// <param name="RemoteAddress">The peer's address and port as text, for logs and per-address limits.</param>
/// <param name="ClientCertificate">The client certificate the TLS handshake verified, if any.</param>
public sealed record ClientEndpoint(string Listener, string RemoteAddress, bool IsLoopback, X509Certificate2? ClientCertificate = null);

/// <summary>Limits one client is held to; the host chooses them per identity when it accepts the CONNECT.</summary>
/// <param name="MaxPublishRate">PUBLISH packets a second the client may send (0: no limit); faster clients are read more slowly.</param>
/// <param name="MaxSubscriptions">Filters one session may hold (0: no limit); more are refused with QuotaExceeded.</param>
/// <param name="MaxRetainedMessages">Retained messages one client may own (0: no limit).</param>
/// <param name="MaxRetainedBytes">Payload bytes of retained messages one client may own (0: no limit).</param>
/// <param name="MaxQueuedMessages">Messages queued for the session while it is offline or slow; beyond it the oldest QoS 0, then the oldest, are dropped (counted, logged).</param>
public sealed record ClientLimits(int MaxPublishRate, int MaxSubscriptions, int MaxRetainedMessages, long MaxRetainedBytes, int MaxQueuedMessages)
{
    /// <summary>No limits but the queue's: for the broker's own clients and the application server.</summary>
    public static ClientLimits Unlimited { get; } = new(0, 0, 0, 0, 1_000_000);
}

/// <summary>The host's answer to a CONNECT.</summary>
/// <param name="ReasonCode"><see cref="ReasonCode.Success"/> to accept, otherwise the CONNACK reason to refuse with.</param>
/// <param name="Identity">Who authenticated (a device id, the server's identity), or null for anonymous.</param>
/// <param name="Limits">Limits for this client.</param>
/// <param name="ReasonString">Sent to MQTT 5 clients with a refusal.</param>
public readonly record struct ConnectDecision(byte ReasonCode, string? Identity, ClientLimits Limits, string? ReasonString = null)
{
    public static ConnectDecision Accept(string? identity, ClientLimits limits) => new(Packets.ReasonCode.Success, identity, limits);

    public static ConnectDecision Refuse(byte reasonCode, string? reasonString = null) => new(reasonCode, null, ClientLimits.Unlimited, reasonString);

    public bool Accepted => ReasonCode == Packets.ReasonCode.Success;
}

/// <summary>A connected client as the host sees it in its checks.</summary>
public sealed class ClientContext(string clientId, string? identity, ClientEndpoint endpoint, MqttVersion version, ClientLimits limits)
{
    public string ClientId { get; } = clientId;

    public string? Identity { get; } = identity;

    public ClientEndpoint Endpoint { get; } = endpoint;

    public MqttVersion Version { get; } = version;

    public ClientLimits Limits { get; } = limits;
}

/// <summary>Why a message was not delivered to a session.</summary>
public enum DropReason
{
    /// <summary>The session's queue was full.</summary>
    QueueFull,
    /// <summary>Its message expiry passed before it could be delivered.</summary>
    Expired,
    /// <summary>Larger than the receiving client's maximum packet size.</summary>
    TooLarge,
    /// <summary>The session expired with messages still queued.</summary>
    SessionExpired,
    /// <summary>The publisher may not publish to the topic (<see cref="IBrokerHooks.MayPublish"/> said no); MQTT 3.1.1 clients are acknowledged as usual.</summary>
    NotAuthorized,
    /// <summary>A retained message over the publisher's retained quota (count or bytes); it is neither retained nor routed.</summary>
    RetainedQuotaExceeded,
}

/// <summary>Why a connection ended, for the host's counters and logs.</summary>
public enum DisconnectKind
{
    /// <summary>The client sent DISCONNECT (normal, or 5's "with will").</summary>
    Clean,
    /// <summary>The socket closed or failed without DISCONNECT.</summary>
    ConnectionLost,
    KeepAliveTimeout,
    /// <summary>Another connection took the client id.</summary>
    TakenOver,
    /// <summary>The client broke the protocol or sent a malformed packet.</summary>
    ProtocolError,
    /// <summary>The host ended it (identity removed or revoked, broker stopping).</summary>
    Administrative,
}

/// <summary>
/// What the host (Nightlight.Broker) decides and observes: authentication, client-id ownership, access control, limits,
/// counters and logs. The core calls these on its connections' threads: they must be quick and must not throw.
/// </summary>
public interface IBrokerHooks
{
    /// <summary>
    /// Decides a CONNECT before any session is touched: credentials, certificate, whether this identity may use this
    /// client id (a session belongs to its identity). <paramref name="connect"/>'s client id is already assigned if it was empty.
    /// </summary>
    ValueTask<ConnectDecision> AuthenticateAsync(ConnectPacket connect, ClientEndpoint endpoint, CancellationToken cancellationToken);

    /// <summary>May this client subscribe to <paramref name="filter"/> (without a <c>$share/group/</c> prefix)? False: SUBACK NotAuthorized for it.</summary>
    bool MaySubscribe(ClientContext client, string filter);

    /// <summary>May this client publish to <paramref name="topic"/> (its wills and retained messages included)? False: dropped, PUBACK NotAuthorized.</summary>
    bool MayPublish(ClientContext client, string topic);

    void OnConnected(ClientContext client, bool sessionPresent);

    void OnDisconnected(ClientContext client, DisconnectKind kind);

    /// <summary>A message that reached the broker and will not reach a subscriber: count it, log it (capped).</summary>
    void OnMessageDropped(string clientId, ApplicationMessage message, DropReason reason);

    /// <summary>A connection sent bytes that are not MQTT or break the protocol; it is being closed with <paramref name="reasonCode"/>.</summary>
    void OnProtocolViolation(ClientEndpoint endpoint, string? clientId, byte reasonCode, string message);

    /// <summary>A message accepted from a client (after access control), for counters. Not called for wills.</summary>
    void OnMessagePublished(ClientContext client, ApplicationMessage message);

    /// <summary>A client sent faster than its <see cref="ClientLimits.MaxPublishRate"/> and is being read more slowly: count it, log it (capped).</summary>
    void OnPublishThrottled(ClientContext client)
    {
    }
}
