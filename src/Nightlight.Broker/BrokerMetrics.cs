using System.Diagnostics.Metrics;

namespace Nightlight.Broker;

/// <summary>What the embedded broker counts, under the meter <c>Nightlight.Broker</c>.</summary>
public sealed class BrokerMetrics : IDisposable
{
    public const string MeterName = "Nightlight.Broker";

    readonly Meter _meter;
    readonly Counter<long> _published;
    readonly Counter<long> _dropped;
    long _connected;
    long _publishedTotal;
    long _droppedTotal;
    long _connectionsRefused;
    long _publishesRefused;
    long _subscriptionsRefused;
    long _packetsRefused;
    long _timedOut;
    long _throttled;
    long _connectRateLimited;
    readonly Counter<long> _refused;
    readonly Counter<long> _routed;

    public BrokerMetrics()
    {
        _meter = new Meter(MeterName);
        _published = _meter.CreateCounter<long>("nightlight.broker.messages.in", "{message}", "PUBLISH packets received from clients");
        _dropped = _meter.CreateCounter<long>("nightlight.broker.messages.dropped", "{message}", "Messages dropped because a subscriber's queue was full");
        _routed = _meter.CreateCounter<long>("nightlight.broker.messages.routed", "{message}", "Messages delivered through the topic index rather than by visiting every session");
        _refused = _meter.CreateCounter<long>("nightlight.broker.refused", "{event}", "Connections, publishes, subscriptions and packets refused (tag: what)");
        _meter.CreateObservableGauge("nightlight.broker.clients", () => Interlocked.Read(ref _connected), "{client}", "Connected clients");
    }

    public long ConnectedClients => Interlocked.Read(ref _connected);
    public long MessagesIn => Interlocked.Read(ref _publishedTotal);
    public long Dropped => Interlocked.Read(ref _droppedTotal);

    public void MessageRouted() => _routed.Add(1);

    public void ClientConnected() => Interlocked.Increment(ref _connected);
    public void ClientDisconnected() => Interlocked.Decrement(ref _connected);

    public void MessageIn()
    {
        Interlocked.Increment(ref _publishedTotal);
        _published.Add(1);
    }

    public long MessageDropped()
    {
        _dropped.Add(1);
        return Interlocked.Increment(ref _droppedTotal);
    }

    /// <summary>CONNECTs refused: bad credentials, anonymous where not allowed, a client id not the identity's.</summary>
    public long ConnectionsRefused => Interlocked.Read(ref _connectionsRefused);

    /// <summary>PUBLISHes refused: not the client's topic, or an invalid topic name.</summary>
    public long PublishesRefused => Interlocked.Read(ref _publishesRefused);

    /// <summary>SUBSCRIBE filters refused.</summary>
    public long SubscriptionsRefused => Interlocked.Read(ref _subscriptionsRefused);

    /// <summary>Connections closed for a packet over Broker:MaxPacketSize, a malformed length, or no CONNECT first.</summary>
    public long PacketsRefused => Interlocked.Read(ref _packetsRefused);

    /// <summary>Connections closed because CONNECT or a begun packet did not arrive within Broker:ReadTimeout.</summary>
    public long ConnectionsTimedOut => Interlocked.Read(ref _timedOut);

    /// <summary>PUBLISH packets held back by Broker:MaxPublishRate.</summary>
    public long PublishesThrottled => Interlocked.Read(ref _throttled);

    /// <summary>New connections closed by Broker:MaxConnectRate (a connect flood from one address).</summary>
    public long ConnectionsRateLimited => Interlocked.Read(ref _connectRateLimited);

    public long ConnectionRateLimited() => Count(ref _connectRateLimited, "connect-rate");
    public long ConnectionRefused() => Count(ref _connectionsRefused, "connection");
    public long PublishRefused() => Count(ref _publishesRefused, "publish");
    public long SubscriptionRefused() => Count(ref _subscriptionsRefused, "subscription");
    public long PacketRefused() => Count(ref _packetsRefused, "packet");
    public long ConnectionTimedOut() => Count(ref _timedOut, "timeout");
    public long PublishThrottled() => Count(ref _throttled, "throttled");

    long Count(ref long total, string what)
    {
        _refused.Add(1, new KeyValuePair<string, object?>("what", what));
        return Interlocked.Increment(ref total);
    }

    public void Dispose() => _meter.Dispose();
}
