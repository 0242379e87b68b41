using Nightlight.Broker.Core.Packets;

namespace Nightlight.Broker.Core.Engine;

/// <summary>
/// One connection's hold on a session: what the connection calls (<see cref="ISessionHandler"/>). A take-over or an
/// administrative close makes it stale at once; the session ignores a stale link's later calls.
/// </summary>
internal sealed class SessionLink(Session session, IClientSink sink, ClientContext client, ConnectPacket connect) : ISessionHandler
{
    public Session Session { get; } = session;

    public IClientSink Sink { get; } = sink;

    public ClientContext Client { get; } = client;

    public MqttVersion Version { get; } = connect.Version;

    public bool IsV5 => Version == MqttVersion.V500;

    /// <summary>QoS 1 and 2 messages the client accepts in flight (5: its receive maximum; 3.1.1: a fixed window).</summary>
    public int SendWindow { get; } = connect.Version == MqttVersion.V500 ? Math.Max((int)connect.ReceiveMaximum, 1) : Session.LegacySendWindow;

    /// <summary>The CONNACK went out: until then the session queues what it would send (it waits for the store).</summary>
    public bool Acknowledged { get; set; }

    /// <summary>Cleared by a normal DISCONNECT.</summary>
    public WillMessage? Will { get; set; } = connect.Will;

    /// <summary>MQTT 5's "disconnect with will message".</summary>
    public bool DisconnectWithWill { get; set; }

    /// <summary>A normal DISCONNECT deleted the stored will: the connection closes once that is durable.</summary>
    public bool WillDiscarded { get; set; }

    public TimeSpan ReadDelay { get; set; }

    // Token bucket of the publish-rate limit: tokens left, and when it was last filled (TimeProvider timestamp).
    internal double RateTokens = client.Limits.MaxPublishRate;

    internal long RateFilledAt;

    public void OnPublish(PublishPacket packet) => Session.HandlePublish(this, packet);

    public void OnPublishAck(PublishAckPacket packet) => Session.HandleAck(this, packet);

    public void OnSubscribe(SubscribePacket packet) => Session.HandleSubscribe(this, packet);

    public void OnUnsubscribe(UnsubscribePacket packet) => Session.HandleUnsubscribe(this, packet);

    public void OnDisconnect(DisconnectPacket packet) => Session.HandleDisconnect(this, packet);

    public ValueTask OnConnectionClosedAsync(DisconnectKind kind)
    {
        Session.Broker.CloseLink(this, kind);
        // The client takes the close as the answer to its DISCONNECT: after it, no crash may bring the will back.
        return WillDiscarded ? Session.Broker.Store.CommitAsync(CancellationToken.None) : ValueTask.CompletedTask;
    }

    public void OnSendQueueDrained() => Session.HandleDrained(this);
}
