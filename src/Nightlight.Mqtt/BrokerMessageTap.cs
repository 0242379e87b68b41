namespace Nightlight.Mqtt;

/// <summary>A message the embedded broker accepted, as a message view shows it.</summary>
/// <param name="At">When the broker accepted it.</param>
/// <param name="Topic">Its topic.</param>
/// <param name="Payload">The first bytes of the payload (at most <see cref="BrokerMessageTap.MaxPayloadBytes"/>).</param>
/// <param name="Size">The whole payload's size in bytes.</param>
/// <param name="Qos">The QoS it was published with: 0, 1 or 2.</param>
/// <param name="Retain">Whether the publisher asked the broker to keep it for later subscribers.</param>
/// <param name="SenderClientId">The publishing client's id.</param>
public sealed record TappedMessage(DateTimeOffset At, string Topic, byte[] Payload, int Size, int Qos, bool Retain, string SenderClientId);

/// <summary>
/// Lets one watcher (the dashboard's message view) see every message the embedded broker accepts, with what a
/// subscription would not tell: QoS, the retain flag, the sender. Unwatched, the broker's only cost is one null check.
/// </summary>
public sealed class BrokerMessageTap
{
    /// <summary>Payload bytes kept per message; a view shows the start of a large payload.</summary>
    public const int MaxPayloadBytes = 1024;

    sealed record Watcher(Func<bool> Wants, Action<TappedMessage> See);

    volatile Watcher? _watcher;

    /// <summary>True while the watcher wants messages; the broker builds a <see cref="TappedMessage"/> only then.</summary>
    public bool IsWatched => _watcher is { } watcher && watcher.Wants();

    /// <summary>
    /// Sets the watcher: <paramref name="wants"/> says cheaply whether anyone looks now (an open page),
    /// <paramref name="see"/> is called on the broker's receive path and must not wait. Dispose to stop.
    /// </summary>
    public IDisposable Watch(Func<bool> wants, Action<TappedMessage> see)
    {
        var watcher = new Watcher(wants, see);
        _watcher = watcher;
        return new Unwatch(this, watcher);
    }

    /// <summary>Called by the broker for each accepted message while <see cref="IsWatched"/>.</summary>
    public void Offer(TappedMessage message) => _watcher?.See(message);

    sealed class Unwatch(BrokerMessageTap tap, Watcher watcher) : IDisposable
    {
        public void Dispose() => Interlocked.CompareExchange(ref tap._watcher, null, watcher);
    }
}
