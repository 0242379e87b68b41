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

    public BrokerMetrics()
    {
        _meter = new Meter(MeterName);
        _published = _meter.CreateCounter<long>("nightlight.broker.messages.in", "{message}", "PUBLISH packets received from clients");
        _dropped = _meter.CreateCounter<long>("nightlight.broker.messages.dropped", "{message}", "Messages not delivered or not retained (tag reason: queue-full, expired, too-large, session-expired, not-authorized, retained-quota)");
        _refused = _meter.CreateCounter<long>("nightlight.broker.refused", "{event}", "Connections, publishes, subscriptions and packets refused (tag: what)");
        _meter.CreateObservableGauge("nightlight.broker.clients", () => Interlocked.Read(ref _connected), "{client}", "Connected clients");
    }

    public long ConnectedClients => Interlocked.Read(ref _connected);
    public long MessagesIn => Interlocked.Read(ref _publishedTotal);
    public long Dropped => Interlocked.Read(ref _droppedTotal);

    public void ClientConnected() => Interlocked.Increment(ref _connected);
    public void ClientDisconnected() => Interlocked.Decrement(ref _connected);

    public void MessageIn()
    {
        Interlocked.Increment(ref _publishedTotal);
        _published.Add(1);
    }

    public long MessageDropped(Nightlight.Broker.Core.DropReason reason)
    {
        _dropped.Add(1, new KeyValuePair<string, object?>("reason", reason switch
        {
            Nightlight.Broker.Core.DropReason.QueueFull => "queue-full",
            Nightlight.Broker.Core.DropReason.Expired => "expired",
            Nightlight.Broker.Core.DropReason.TooLarge => "too-large",
            Nightlight.Broker.Core.DropReason.SessionExpired => "session-expired",
            Nightlight.Broker.Core.DropReason.NotAuthorized => "not-authorized",
            Nightlight.Broker.Core.DropReason.RetainedQuotaExceeded => "retained-quota",
            _ => "other",
        }));
        return Interlocked.Increment(ref _droppedTotal);
    }

    /// <summary>CONNECTs refused: bad credentials, anonymous where not allowed, a client id not the identity's.</summary>
    public long ConnectionsRefused => Interlocked.Read(ref _connectionsRefused);

    /// <summary>PUBLISHes refused: not the client's topic, or an invalid topic name.</summary>
    public long PublishesRefused => Interlocked.Read(ref _publishesRefused);

    /// <summary>SUBSCRIBE filters refused.</summary>
    public long SubscriptionsRefused => Interlocked.Read(ref _subscriptionsRefused);

    /// <summary>Connections closed for a malformed packet, a packet over Broker:MaxPacketSize, or a protocol violation.</summary>
    public long PacketsRefused => Interlocked.Read(ref _packetsRefused);

    /// <summary>Connections closed because CONNECT did not arrive within Broker:ReadTimeout, or keep-alive expired.</summary>
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

/// <summary>The broker core's statistics and its session store's health, as instruments of the same meter.</summary>
sealed class BrokerGauges : IDisposable
{
    readonly Meter _meter = new(BrokerMetrics.MeterName);

    public BrokerGauges(Nightlight.Broker.Core.Engine.MqttBroker broker, Nightlight.Broker.Core.Persistence.ISessionStore store)
    {
        _meter.CreateObservableGauge("nightlight.broker.sessions", () => (long)broker.Statistics.Sessions, "{session}", "Sessions, connected or kept for a client that is away");
        _meter.CreateObservableGauge("nightlight.broker.retained", () => (long)broker.Statistics.RetainedMessages, "{message}", "Retained messages");
        _meter.CreateObservableCounter("nightlight.broker.messages.delivered", () => (long)broker.Statistics.MessagesDelivered, "{message}", "Messages handed to subscribers");
        _meter.CreateObservableCounter("nightlight.broker.wills.after_restart", () => broker.Statistics.WillsPublishedAfterRestart, "{message}",
            "Wills the previous run left stored (connections it ended without DISCONNECT) published since start");
        if (store is Nightlight.Broker.Core.Persistence.FileSessionStore file)
        {
            _meter.CreateObservableCounter("nightlight.broker.store.damaged", () => file.DamagedRecords, "{record}", "Session store records skipped at start because they failed their checksum");
            _meter.CreateObservableCounter("nightlight.broker.store.write_failures", () => file.WriteFailures, "{write}", "Session store writes the disk refused (full)");
            _meter.CreateObservableGauge("nightlight.broker.store.journal", () => file.JournalBytes, "By", "Bytes in the session store's journal");
        }
    }

    public void Dispose() => _meter.Dispose();
}
