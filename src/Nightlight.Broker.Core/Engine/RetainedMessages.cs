using System.Collections.Concurrent;

namespace Nightlight.Broker.Core.Engine;

/// <summary>The last retained message per topic, with what each publisher owns counted against its quota.</summary>
internal sealed class RetainedMessages
{
    private readonly ConcurrentDictionary<string, ApplicationMessage> _byTopic = new(StringComparer.Ordinal);
    private readonly Dictionary<string, (int Count, long Bytes)> _byOwner = new(StringComparer.Ordinal);
    private readonly Lock _gate = new();

    public int Count => _byTopic.Count;

    /// <summary>
    /// Keeps <paramref name="message"/> as its topic's retained message, or forgets the topic's when its payload is empty.
    /// False (nothing changed) when it would take its publisher over <paramref name="limits"/>.
    /// </summary>
    public bool TrySet(ApplicationMessage message, ClientLimits? limits)
    {
        lock (_gate)
        {
            _byTopic.TryGetValue(message.Topic, out var previous);
            if (message.Payload.IsEmpty)
            {
                if (previous is not null)
                {
                    _byTopic.TryRemove(message.Topic, out _);
                    Account(previous, -1);
                }

                return true;
            }

            if (limits is not null && message.SenderClientId is { } owner && (limits.MaxRetainedMessages > 0 || limits.MaxRetainedBytes > 0))
            {
                _byOwner.TryGetValue(owner, out var usage);
                var replacesOwn = previous?.SenderClientId == owner;
                var count = usage.Count + (replacesOwn ? 0 : 1);
                var bytes = usage.Bytes + message.Payload.Length - (replacesOwn ? previous!.Payload.Length : 0);
                if ((limits.MaxRetainedMessages > 0 && count > limits.MaxRetainedMessages) || (limits.MaxRetainedBytes > 0 && bytes > limits.MaxRetainedBytes))
                {
                    return false;
                }
            }

            _byTopic[message.Topic] = message;
            if (previous is not null)
            {
                Account(previous, -1);
            }

            Account(message, +1);
            return true;
        }
    }

    /// <summary>Adds every retained message matching <paramref name="topicFilter"/> to <paramref name="into"/>.</summary>
    public void CollectMatching(string topicFilter, List<ApplicationMessage> into)
    {
        if (topicFilter.AsSpan().IndexOfAny('+', '#') < 0)
        {
            // A device subscribing to its own commands topic: one lookup, not a scan of every retained message.
            if (_byTopic.TryGetValue(topicFilter, out var exact))
            {
                into.Add(exact);
            }

            return;
        }

        foreach (var (topic, message) in _byTopic)
        {
            if (TopicFilter.Matches(topicFilter, topic))
            {
                into.Add(message);
            }
        }
    }

    /// <summary>Forgets <paramref name="message"/> if it is still its topic's retained message (it expired). True when it was.</summary>
    public bool Remove(ApplicationMessage message)
    {
        lock (_gate)
        {
            if (!_byTopic.TryRemove(new KeyValuePair<string, ApplicationMessage>(message.Topic, message)))
            {
                return false;
            }

            Account(message, -1);
            return true;
        }
    }

    private void Account(ApplicationMessage message, int sign)
    {
        if (message.SenderClientId is not { } owner)
        {
            return;
        }

        _byOwner.TryGetValue(owner, out var usage);
        usage = (usage.Count + sign, usage.Bytes + (sign * message.Payload.Length));
        if (usage.Count <= 0)
        {
            _byOwner.Remove(owner);
        }
        else
        {
            _byOwner[owner] = usage;
        }
    }
}
