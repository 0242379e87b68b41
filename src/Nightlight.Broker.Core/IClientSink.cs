using Nightlight.Broker.Core.Packets;

namespace Nightlight.Broker.Core;

/// <summary>
/// The engine's view of one network connection (implemented by <c>Connection/MqttConnection</c>): it queues packets for
/// writing and never blocks the caller. Outbound topic aliases and the client's maximum packet size are its business.
/// </summary>
public interface IClientSink
{
    MqttVersion Version { get; }

    /// <summary>Queues a control packet (CONNACK, SUBACK, PUBACK, ...).</summary>
    void Send(MqttPacket packet);

    /// <summary>
    /// Queues a PUBLISH of <paramref name="message"/> with this session's packet id, QoS, RETAIN and DUP flags and the
    /// subscription identifiers that matched. False when it is larger than the client's maximum packet size (then
    /// the engine drops it for this client, MQTT 5 3.1.2-25, and counts it).
    /// </summary>
    bool SendPublish(ApplicationMessage message, ushort packetId, byte qos, bool retain, bool dup, ReadOnlySpan<uint> subscriptionIdentifiers);

    /// <summary>Bytes and packets queued but not yet written: the engine stops handing more when it is high (slow consumer).</summary>
    long PendingBytes { get; }

    /// <summary>Sends DISCONNECT with <paramref name="reasonCode"/> (MQTT 5 only; 3.1.1 just closes) and closes the connection.</summary>
    void Close(byte reasonCode, string? reasonString = null);
}

/// <summary>
/// A session's handling of the packets its connection reads after CONNECT (implemented by the engine). The connection
/// calls these one at a time, in the order the packets arrived, and never after <see cref="OnConnectionClosedAsync"/>.
/// </summary>
public interface ISessionHandler
{
    ClientContext Client { get; }

    /// <summary>A PUBLISH whose topic the connection has already resolved from its alias.</summary>
    void OnPublish(PublishPacket packet);

    /// <summary>PUBACK, PUBREC, PUBREL or PUBCOMP.</summary>
    void OnPublishAck(PublishAckPacket packet);

    void OnSubscribe(SubscribePacket packet);

    void OnUnsubscribe(UnsubscribePacket packet);

    /// <summary>The client's DISCONNECT; <see cref="OnConnectionClosedAsync"/> follows.</summary>
    void OnDisconnect(DisconnectPacket packet);

    /// <summary>
    /// The connection is gone, for <paramref name="kind"/>: publish the will unless it was a normal DISCONNECT, start
    /// session expiry. Completes when the client may be told (the transport closed): once a discarded will is off the store.
    /// </summary>
    ValueTask OnConnectionClosedAsync(DisconnectKind kind);

    /// <summary>
    /// The connection's <see cref="IClientSink.PendingBytes"/> fell below <see cref="BrokerCoreOptions.MaxPendingBytesPerConnection"/>
    /// after having been above it: the engine hands over the messages it held back. (The engine also retries on its own.)
    /// </summary>
    void OnSendQueueDrained() { }

    /// <summary>
    /// How long the connection should wait before reading its next packet, read after each <see cref="OnPublish"/>:
    /// the client's publish-rate limit (<see cref="ClientLimits.MaxPublishRate"/>) slows its reading, nothing is dropped.
    /// </summary>
    TimeSpan ReadDelay => TimeSpan.Zero;
}

/// <summary>Where a connection takes its CONNECT (implemented by the engine).</summary>
public interface ISessionRegistry
{
    /// <summary>
    /// Authenticates through the hooks, assigns a client id if needed, takes over or resumes or creates the session,
    /// sends CONNACK through <paramref name="sink"/>, then whatever the session had queued. Null when refused (the
    /// refusing CONNACK is already sent; the connection closes).
    /// </summary>
    ValueTask<ISessionHandler?> ConnectAsync(ConnectPacket connect, ClientEndpoint endpoint, IClientSink sink, CancellationToken cancellationToken);
}
