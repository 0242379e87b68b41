using Nightlight.Broker.Core.Persistence;

namespace Nightlight.Broker.Core.Engine;

/// <summary>A message on its way to one session: queued, or in flight with a packet id.</summary>
internal sealed class Outbound(ApplicationMessage message, byte qos, bool retain, uint[] subscriptionIdentifiers)
{
    public ApplicationMessage Message { get; } = message;

    public byte QoS { get; } = qos;

    public bool Retain { get; } = retain;

    public uint[] SubscriptionIdentifiers { get; } = subscriptionIdentifiers;

    /// <summary>The store's id (0: not stored, the session does not outlive its connection or it is QoS 0).</summary>
    public long MessageId { get; set; }

    /// <summary>Enqueued in the store already.</summary>
    public bool Persisted { get; set; }

    public ushort PacketId { get; set; }

    /// <summary>QoS 2: PUBREC received, PUBREL sent.</summary>
    public bool Released { get; set; }

    /// <summary>Send order, so a resumed session resends its in-flight messages in the order they first went out.</summary>
    public long Sequence { get; set; }

    public StoredDelivery ToStored() => new(MessageId, PacketId, QoS, Retain, Released, SubscriptionIdentifiers);
}

/// <summary>A session's waiting messages, oldest first: a ring buffer that can also drop from the middle (the oldest QoS 0).</summary>
internal sealed class OutboundQueue
{
    private Outbound?[] _items = [];
    private int _head;

    public int Count { get; private set; }

    public int QoS0Count { get; private set; }

    public Outbound Peek() => _items[_head]!;

    public void Enqueue(Outbound item)
    {
        if (Count == _items.Length)
        {
            Grow();
        }

        _items[(_head + Count) % _items.Length] = item;
        Count++;
        if (item.QoS == 0)
        {
            QoS0Count++;
        }
    }

    public Outbound Dequeue()
    {
        var item = _items[_head]!;
        _items[_head] = null;
        _head = (_head + 1) % _items.Length;
        Count--;
        if (item.QoS == 0)
        {
            QoS0Count--;
        }

        return item;
    }

    /// <summary>Takes out the oldest QoS 0 message, or null when there is none.</summary>
    public Outbound? RemoveOldestQoS0()
    {
        if (QoS0Count == 0)
        {
            return null;
        }

        for (var i = 0; i < Count; i++)
        {
            var index = (_head + i) % _items.Length;
            var item = _items[index]!;
            if (item.QoS != 0)
            {
                continue;
            }

            // Close the gap by moving the older entries one step towards the tail.
            for (var j = i; j > 0; j--)
            {
                _items[(_head + j) % _items.Length] = _items[(_head + j - 1) % _items.Length];
            }

            _items[_head] = null;
            _head = (_head + 1) % _items.Length;
            Count--;
            QoS0Count--;
            return item;
        }

        return null;
    }

    /// <summary>Empties the queue, returning what it held in order.</summary>
    public List<Outbound> DrainAll()
    {
        var all = new List<Outbound>(Count);
        while (Count > 0)
        {
            all.Add(Dequeue());
        }

        _items = [];
        _head = 0;
        return all;
    }

    /// <summary>Drops the QoS 0 messages (a session going offline keeps only QoS 1 and 2), returning how many.</summary>
    public int RemoveAllQoS0()
    {
        var removed = 0;
        var count = Count;
        for (var i = 0; i < count; i++)
        {
            var item = Dequeue();
            if (item.QoS == 0)
            {
                removed++;
            }
            else
            {
                Enqueue(item);
            }
        }

        return removed;
    }

    private void Grow()
    {
        var grown = new Outbound?[Math.Max(4, _items.Length * 2)];
        for (var i = 0; i < Count; i++)
        {
            grown[i] = _items[(_head + i) % _items.Length];
        }

        _items = grown;
        _head = 0;
    }
}
