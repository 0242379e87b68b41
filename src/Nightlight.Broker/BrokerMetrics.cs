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

    public BrokerMetrics()
    {
        _meter = new Meter(MeterName);
        _published = _meter.CreateCounter<long>("nightlight.broker.messages.in", "{message}", "PUBLISH packets received from clients");
        _dropped = _meter.CreateCounter<long>("nightlight.broker.messages.dropped", "{message}", "Messages dropped because a subscriber's queue was full");
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

    public long MessageDropped()
    {
        _dropped.Add(1);
        return Interlocked.Increment(ref _droppedTotal);
    }

    public void Dispose() => _meter.Dispose();
}
