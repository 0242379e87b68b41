using Nightlight.Broker.Core.Packets;

namespace Nightlight.Broker.Core.Engine;

/// <summary>Whoever holds subscriptions: a session of a network client or an in-process client.</summary>
internal abstract class Subscriber
{
    private static long s_lastId;

    /// <summary>Orders subscribers so one publish's matches can be grouped per subscriber without a dictionary.</summary>
    internal readonly long Id = Interlocked.Increment(ref s_lastId);

    public abstract string ClientId { get; }

    /// <summary>Has a live connection now (a shared subscription prefers such members).</summary>
    public abstract bool IsOnline { get; }

    /// <summary>Keeps QoS 1 and 2 messages while offline.</summary>
    public abstract bool QueuesOffline { get; }

    /// <summary>
    /// Delivers <paramref name="route"/>'s message once for all of <paramref name="subscriptions"/> (this subscriber's
    /// matching ones): the highest QoS, every subscription identifier. True when it was sent or queued.
    /// </summary>
    internal abstract bool Deliver(ref RouteContext route, ReadOnlySpan<Subscription> subscriptions);
}

/// <summary>One filter of one subscriber, as the topic tree holds it.</summary>
internal sealed class Subscription(Subscriber owner, string filter, string topicFilter, string? shareGroup, TopicSubscription options, uint identifier)
{
    private volatile bool _removed;
    private volatile Subscription? _replacedBy;

    public Subscriber Owner { get; } = owner;

    /// <summary>As subscribed, with any <c>$share/group/</c> prefix.</summary>
    public string Filter { get; } = filter;

    /// <summary>The part that matches topics.</summary>
    public string TopicFilter { get; } = topicFilter;

    public string? ShareGroup { get; } = shareGroup;

    public byte MaximumQoS { get; } = Math.Min(options.MaximumQoS, (byte)2);

    public bool NoLocal { get; } = options.NoLocal;

    public bool RetainAsPublished { get; } = options.RetainAsPublished;

    public byte RetainHandling { get; } = options.RetainHandling;

    /// <summary>0: none.</summary>
    public uint Identifier { get; } = identifier;

    /// <summary>Set (under the owner's lock) when unsubscribed: a publish that found it in the tree just before skips it.</summary>
    public bool Removed
    {
        get => _removed;
        set => _removed = value;
    }

    /// <summary>
    /// Set (under the owner's lock) when a SUBSCRIBE with the same filter replaced it. A publish that found this one in
    /// the tree just before the swap is delivered with the replacement's options: the flow of messages on a
    /// re-subscribed filter is never interrupted (MQTT-3.8.4-3), as a server re-subscribing at every reconnect needs.
    /// </summary>
    public Subscription? ReplacedBy
    {
        get => _replacedBy;
        set => _replacedBy = value;
    }

    /// <summary>This subscription as it stands now: the last of its replacements.</summary>
    public Subscription Current
    {
        get
        {
            var s = this;
            while (s._replacedBy is { } next)
            {
                s = next;
            }

            return s;
        }
    }
}

/// <summary>One publish on its way through the tree: made once, passed by reference to every subscriber it reaches.</summary>
internal struct RouteContext(ApplicationMessage message, long nowUnixMs)
{
    public readonly ApplicationMessage Message = message;

    public readonly long NowUnixMs = nowUnixMs;

    /// <summary>The store's id for the message, given at its first delivery to a stored session (0: not saved yet).</summary>
    public long MessageId;

    /// <summary>Something was written to the store that must be durable before the publisher's acknowledgement.</summary>
    public bool NeedsCommit;

    public int Deliveries;

    public readonly bool IsExpired => Message.ExpiresAtUnixMs != 0 && NowUnixMs >= Message.ExpiresAtUnixMs;
}
