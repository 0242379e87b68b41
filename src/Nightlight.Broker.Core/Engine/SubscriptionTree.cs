using System.Collections.Concurrent;

namespace Nightlight.Broker.Core.Engine;

/// <summary>
/// Every subscription by filter level. Publishes read it without a lock (children and subscriber arrays are replaced,
/// never changed in place); subscribes and unsubscribes take one writer lock.
/// </summary>
internal sealed class SubscriptionTree
{
    private readonly Node _root = new(null, "");
    private readonly Lock _writeGate = new();

    public void Add(Subscription subscription)
    {
        lock (_writeGate)
        {
            var node = _root;
            foreach (var level in subscription.TopicFilter.Split('/'))
            {
                node = node.GetOrAddChild(level);
            }

            if (subscription.ShareGroup is null)
            {
                node.Subscribers = [.. node.Subscribers, subscription];
                return;
            }

            var group = Array.Find(node.Groups, g => g.Name == subscription.ShareGroup);
            if (group is null)
            {
                node.Groups = [.. node.Groups, new SharedGroup(subscription.ShareGroup, [subscription])];
            }
            else
            {
                group.Members = [.. group.Members, subscription];
            }
        }
    }

    /// <summary>Puts <paramref name="replacement"/> where <paramref name="existing"/> was (same filter) in one step, so no publish misses both.</summary>
    public void Replace(Subscription existing, Subscription replacement)
    {
        lock (_writeGate)
        {
            var node = Find(existing.TopicFilter);
            if (node is null)
            {
                Add(replacement);
                return;
            }

            if (existing.ShareGroup is null)
            {
                node.Subscribers = ReplaceIn(node.Subscribers, existing, replacement);
            }
            else if (Array.Find(node.Groups, g => g.Name == existing.ShareGroup) is { } group)
            {
                group.Members = ReplaceIn(group.Members, existing, replacement);
            }
        }
    }

    public void Remove(Subscription subscription)
    {
        lock (_writeGate)
        {
            var node = Find(subscription.TopicFilter);
            if (node is null)
            {
                return;
            }

            if (subscription.ShareGroup is null)
            {
                node.Subscribers = Without(node.Subscribers, subscription);
            }
            else if (Array.Find(node.Groups, g => g.Name == subscription.ShareGroup) is { } group)
            {
                group.Members = Without(group.Members, subscription);
                if (group.Members.Length == 0)
                {
                    node.Groups = Array.FindAll(node.Groups, g => g != group);
                }
            }

            while (node.Parent is { } parent && node.IsEmpty)
            {
                parent.RemoveChild(node);
                node = parent;
            }
        }
    }

    /// <summary>
    /// Adds to <paramref name="direct"/> every non-shared subscription matching <paramref name="topic"/>, and to
    /// <paramref name="shared"/> each matching share group (one of its members gets the message).
    /// </summary>
    public void Match(string topic, List<Subscription> direct, List<SharedGroup> shared)
    {
        var dollar = topic.Length > 0 && topic[0] == '$';
        MatchLevel(_root, topic.AsSpan(), first: true, dollar, direct, shared);
    }

    private static void MatchLevel(Node node, ReadOnlySpan<char> rest, bool first, bool dollar, List<Subscription> direct, List<SharedGroup> shared)
    {
        var wildcardsAllowed = !(first && dollar);
        if (wildcardsAllowed && node.FindChild("#") is { } hash)
        {
            Collect(hash, direct, shared);
        }

        var slash = rest.IndexOf('/');
        var level = slash < 0 ? rest : rest[..slash];
        if (node.FindChild(level) is { } exact)
        {
            MatchBelow(exact, rest, slash, dollar, direct, shared);
        }

        if (wildcardsAllowed && node.FindChild("+") is { } plus)
        {
            MatchBelow(plus, rest, slash, dollar, direct, shared);
        }
    }

    private static void MatchBelow(Node child, ReadOnlySpan<char> rest, int slash, bool dollar, List<Subscription> direct, List<SharedGroup> shared)
    {
        if (slash >= 0)
        {
            MatchLevel(child, rest[(slash + 1)..], first: false, dollar, direct, shared);
            return;
        }

        Collect(child, direct, shared);
        // "a/#" matches "a" too.
        if (child.FindChild("#") is { } hash)
        {
            Collect(hash, direct, shared);
        }
    }

    private static void Collect(Node node, List<Subscription> direct, List<SharedGroup> shared)
    {
        foreach (var subscription in node.Subscribers)
        {
            direct.Add(subscription);
        }

        foreach (var group in node.Groups)
        {
            shared.Add(group);
        }
    }

    private Node? Find(string topicFilter)
    {
        var node = _root;
        foreach (var level in topicFilter.Split('/'))
        {
            node = node.FindChild(level);
            if (node is null)
            {
                return null;
            }
        }

        return node;
    }

    private static Subscription[] Without(Subscription[] items, Subscription item) => Array.FindAll(items, s => s != item);

    private static Subscription[] ReplaceIn(Subscription[] items, Subscription existing, Subscription replacement)
    {
        var copy = (Subscription[])items.Clone();
        var index = Array.IndexOf(copy, existing);
        if (index < 0)
        {
            return [.. items, replacement];
        }

        copy[index] = replacement;
        return copy;
    }

    /// <summary>One filter level. Few children live in an array; many in a concurrent dictionary looked up by span.</summary>
    private sealed class Node(Node? parent, string level)
    {
        private const int ArrayLimit = 8;

        // Node[] or ConcurrentDictionary<string, Node>; replaced, never changed in place while it is an array.
        private volatile object? _children;

        public Node? Parent { get; } = parent;

        public string Level { get; } = level;

        public volatile Subscription[] Subscribers = [];

        public volatile SharedGroup[] Groups = [];

        public bool IsEmpty => Subscribers.Length == 0 && Groups.Length == 0 && _children switch
        {
            null => true,
            Node[] array => array.Length == 0,
            ConcurrentDictionary<string, Node> map => map.IsEmpty,
            _ => true,
        };

        public Node? FindChild(ReadOnlySpan<char> level)
        {
            switch (_children)
            {
                case Node[] array:
                    foreach (var child in array)
                    {
                        if (level.SequenceEqual(child.Level))
                        {
                            return child;
                        }
                    }

                    return null;
                case ConcurrentDictionary<string, Node> map:
                    return map.GetAlternateLookup<ReadOnlySpan<char>>().TryGetValue(level, out var found) ? found : null;
                default:
                    return null;
            }
        }

        /// <summary>Called under the tree's writer lock.</summary>
        public Node GetOrAddChild(string level)
        {
            if (FindChild(level) is { } existing)
            {
                return existing;
            }

            var node = new Node(this, level);
            switch (_children)
            {
                case ConcurrentDictionary<string, Node> map:
                    map[level] = node;
                    break;
                case Node[] { Length: >= ArrayLimit } array:
                    var grown = new ConcurrentDictionary<string, Node>(StringComparer.Ordinal);
                    foreach (var child in array)
                    {
                        grown[child.Level] = child;
                    }

                    grown[level] = node;
                    _children = grown;
                    break;
                case Node[] array:
                    _children = (Node[])[.. array, node];
                    break;
                default:
                    _children = new[] { node };
                    break;
            }

            return node;
        }

        /// <summary>Called under the tree's writer lock.</summary>
        public void RemoveChild(Node child)
        {
            switch (_children)
            {
                case ConcurrentDictionary<string, Node> map:
                    map.TryRemove(child.Level, out _);
                    break;
                case Node[] array:
                    var rest = Array.FindAll(array, n => n != child);
                    _children = rest.Length == 0 ? null : rest;
                    break;
            }
        }
    }
}

/// <summary>The members of one <c>$share/group/filter</c>: each message goes to one of them, in turn.</summary>
internal sealed class SharedGroup(string name, Subscription[] members)
{
    private int _next;

    public string Name { get; } = name;

    public volatile Subscription[] Members = members;

    /// <summary>
    /// Delivers to one member: the next connected one in turn; when none is connected, the next that keeps messages
    /// offline. A member that turns out to be gone (unsubscribed, or its session ended, after the group was found)
    /// passes the message on to the next, so a member leaving never loses a message the others could take.
    /// </summary>
    public bool Deliver(ref RouteContext route)
    {
        var members = Members;
        if (members.Length == 0)
        {
            return false;
        }

        var start = (int)((uint)Interlocked.Increment(ref _next) % (uint)members.Length);
        for (var pass = 0; pass < 2; pass++)
        {
            for (var i = 0; i < members.Length; i++)
            {
                var member = members[(start + i) % members.Length];
                var wanted = pass == 0 ? member.Owner.IsOnline : member.Owner.QueuesOffline && !member.Owner.IsOnline;
                if (!wanted || member.Current.Removed)
                {
                    continue;
                }

                if (member.Owner.Deliver(ref route, new ReadOnlySpan<Subscription>(ref member)))
                {
                    return true;
                }

                if (route.IsExpired)
                {
                    return false; // Dropped and counted once; another member would only count it again.
                }
            }
        }

        return false;
    }
}
