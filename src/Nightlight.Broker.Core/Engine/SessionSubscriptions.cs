using System.Diagnostics.CodeAnalysis;

namespace Nightlight.Broker.Core.Engine;

/// <summary>
/// A session's subscriptions by filter. Most devices hold one (their <c>{id}/commands</c>): that one is kept in a field,
/// and a dictionary (about 200 bytes more) is made only for the second. Mutable struct: keep it in a field, never copy it.
/// </summary>
internal struct SessionSubscriptions
{
    Subscription? _single;
    Dictionary<string, Subscription>? _many;

    public readonly int Count => _many?.Count ?? (_single is null ? 0 : 1);

    public readonly bool TryGetValue(string filter, [NotNullWhen(true)] out Subscription? subscription)
    {
        if (_many is not null)
        {
            return _many.TryGetValue(filter, out subscription);
        }
        subscription = _single is not null && string.Equals(_single.Filter, filter, StringComparison.Ordinal) ? _single : null;
        return subscription is not null;
    }

    /// <summary>Adds <paramref name="subscription"/>, or replaces the one with its filter.</summary>
    public void Set(Subscription subscription)
    {
        if (_many is null && (_single is null || string.Equals(_single.Filter, subscription.Filter, StringComparison.Ordinal)))
        {
            _single = subscription;
            return;
        }
        if (_many is null)
        {
            _many = new Dictionary<string, Subscription>(StringComparer.Ordinal) { [_single!.Filter] = _single };
            _single = null;
        }
        _many[subscription.Filter] = subscription;
    }

    public bool Remove(string filter, [NotNullWhen(true)] out Subscription? subscription)
    {
        if (_many is not null)
        {
            return _many.Remove(filter, out subscription);
        }
        if (_single is not null && string.Equals(_single.Filter, filter, StringComparison.Ordinal))
        {
            subscription = _single;
            _single = null;
            return true;
        }
        subscription = null;
        return false;
    }

    public void Clear()
    {
        _single = null;
        _many = null;
    }

    public readonly Enumerator GetEnumerator() => new(_single, _many);

    public struct Enumerator
    {
        readonly Subscription? _single;
        readonly bool _useMany;
        Dictionary<string, Subscription>.ValueCollection.Enumerator _many;
        bool _singleTaken;

        internal Enumerator(Subscription? single, Dictionary<string, Subscription>? many)
        {
            _single = single;
            _useMany = many is not null;
            _many = many is not null ? many.Values.GetEnumerator() : default;
            _singleTaken = false;
            Current = null!;
        }

        public Subscription Current { get; private set; }

        public bool MoveNext()
        {
            if (_useMany)
            {
                var moved = _many.MoveNext();
                Current = moved ? _many.Current : null!;
                return moved;
            }
            if (_singleTaken || _single is null)
            {
                return false;
            }
            _singleTaken = true;
            Current = _single;
            return true;
        }
    }
}
