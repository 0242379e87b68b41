namespace Nightlight.Broker.Core.Persistence;

/// <summary>One subscription of a stored session; <see cref="Filter"/> keeps its <c>$share/group/</c> prefix.</summary>
public readonly record struct StoredSubscription(string Filter, byte MaximumQoS, bool NoLocal, bool RetainAsPublished, byte RetainHandling, uint SubscriptionIdentifier);

/// <summary>A session that outlives its connection, as stored.</summary>
/// <param name="SessionExpiryInterval">Seconds after disconnection; <see cref="uint.MaxValue"/>: never.</param>
/// <param name="DisconnectedAtUnixMs">When its connection ended; 0 while connected (after a crash: counts from the restart).</param>
public sealed record StoredSession(string ClientId, string? Identity, uint SessionExpiryInterval, long DisconnectedAtUnixMs, IReadOnlyList<StoredSubscription> Subscriptions);

/// <summary>A message queued or in flight for one session.</summary>
/// <param name="MessageId">The id the message was saved under (<see cref="ISessionStore.SaveMessage"/>).</param>
/// <param name="PacketId">The packet id it was sent with; 0 while not yet sent.</param>
/// <param name="QoS">The QoS it is delivered with (min of published and granted).</param>
/// <param name="Released">QoS 2: PUBREC received and PUBREL sent, so only PUBREL is resent.</param>
/// <param name="SubscriptionIdentifiers">The identifiers of the subscriptions it matched (5), empty when none.</param>
public readonly record struct StoredDelivery(long MessageId, ushort PacketId, byte QoS, bool Retain, bool Released, uint[] SubscriptionIdentifiers);

/// <summary>The will of a connection: kept while the connection is open, and for a stored session until its Will Delay Interval (5) runs out.</summary>
/// <param name="Listener">The listener its connection came in on, for the access check when it is published.</param>
/// <param name="Message">The will as published (no expiry time: that starts when it is published).</param>
/// <param name="DelayInterval">Seconds from the end of the connection to publication.</param>
/// <param name="DueAtUnixMs">When it is due; 0 while its connection is open (after a crash the delay counts from the restart; without a stored session it is due at once).</param>
public sealed record StoredWill(string ClientId, string? Identity, string Listener, ApplicationMessage Message, uint DelayInterval, long DueAtUnixMs);

/// <summary>Everything a broker restart resumes from.</summary>
public sealed class BrokerSnapshot
{
    public List<(StoredSession Session, List<StoredDelivery> Deliveries)> Sessions { get; } = [];

    /// <summary>Messages that deliveries refer to, by id.</summary>
    public Dictionary<long, ApplicationMessage> Messages { get; } = [];

    public List<ApplicationMessage> Retained { get; } = [];

    /// <summary>Per client id, QoS 2 packet ids received and acknowledged with PUBREC, awaiting PUBREL (so they are not delivered twice).</summary>
    public Dictionary<string, HashSet<ushort>> InboundQoS2 { get; } = [];

    /// <summary>Wills not yet published, by client id: of connections open at the end of the last run, and delayed ones.</summary>
    public Dictionary<string, StoredWill> Wills { get; } = [];

    /// <summary>The highest message id in use: new ids continue above it.</summary>
    public long LastMessageId { get; set; }
}

/// <summary>
/// Where the engine keeps what must survive a broker restart: persistent sessions, their queued and in-flight messages,
/// the wills of open connections and delayed ones, retained messages. Only sessions that outlive their connection are stored, and only QoS 1 and 2 messages for them.
/// Calls return at once (the store buffers); <see cref="CommitAsync"/> says when they are durable.
/// </summary>
public interface ISessionStore : IAsyncDisposable
{
    /// <summary>
    /// Reads what was stored; called once, before the broker accepts connections. Damaged records are skipped, counted
    /// and logged; a store written in a newer format than this version reads throws <see cref="InvalidDataException"/>.
    /// </summary>
    BrokerSnapshot Load();

    /// <summary>A session was created or changed (subscriptions, expiry, connected or disconnected).</summary>
    void SaveSession(StoredSession session);

    /// <summary>A session ended (clean start, expiry, zero expiry at disconnect): forget it, its deliveries and its will.</summary>
    void DeleteSession(string clientId);

    /// <summary>A connection with a will was accepted, or a stored session's will delay started (one per client id).</summary>
    void SaveWill(StoredWill will);

    /// <summary>The session's will was published, cancelled by a reconnect, or its connection ended normally.</summary>
    void DeleteWill(string clientId);

    /// <summary>Saves a message once, before the first <see cref="Enqueue"/> that refers to it.</summary>
    void SaveMessage(long messageId, ApplicationMessage message);

    /// <summary>A message was queued for (or sent to) a stored session.</summary>
    void Enqueue(string clientId, StoredDelivery delivery);

    /// <summary>A queued message was sent with a packet id, or its PUBREC arrived (<paramref name="released"/>).</summary>
    void UpdateDelivery(string clientId, long messageId, ushort packetId, bool released);

    /// <summary>A delivery is finished (acknowledged, dropped or expired); a message no delivery refers to may be forgotten.</summary>
    void Complete(string clientId, long messageId);

    void SaveRetained(ApplicationMessage message);

    void DeleteRetained(string topic);

    /// <summary>A QoS 2 PUBLISH was received (<paramref name="pending"/> true) or its PUBREL arrived (false).</summary>
    void SaveInboundQoS2(string clientId, ushort packetId, bool pending);

    /// <summary>Completes when every call made before it is durable under the store's fsync policy.</summary>
    ValueTask CommitAsync(CancellationToken cancellationToken = default);
}
