using System.Collections;
using Microsoft.AspNetCore.Http.Features;

namespace Nightlight.Broker;

/// <summary>
/// The features of one <see cref="LeanSocketConnection"/>: Kestrel sets four on every connection (all its own
/// connection object), TLS or the application a few more. Kept in one small array searched in order, about 100 bytes
/// where <see cref="FeatureCollection"/>'s dictionary took 300 and left as much behind while it grew.
/// </summary>
sealed class SmallFeatureCollection : IFeatureCollection
{
    KeyValuePair<Type, object>[]? _features;
    int _count;

    public bool IsReadOnly => false;

    public int Revision { get; private set; }

    public object? this[Type key]
    {
        get
        {
            ArgumentNullException.ThrowIfNull(key);
            var index = IndexOf(key);
            return index < 0 ? null : _features![index].Value;
        }
        set
        {
            ArgumentNullException.ThrowIfNull(key);
            var index = IndexOf(key);
            if (value is null)
            {
                if (index >= 0)
                {
                    _count--;
                    Array.Copy(_features!, index + 1, _features!, index, _count - index);
                    _features![_count] = default;
                    Revision++;
                }
                return;
            }
            if (index >= 0)
            {
                _features![index] = new(key, value);
            }
            else
            {
                if (_features is null || _count == _features.Length)
                {
                    Array.Resize(ref _features, _count + 4);
                }
                _features[_count++] = new(key, value);
            }
            Revision++;
        }
    }

    int IndexOf(Type key)
    {
        for (var i = 0; i < _count; i++)
        {
            if (_features![i].Key == key)
            {
                return i;
            }
        }
        return -1;
    }

    public TFeature? Get<TFeature>() => this[typeof(TFeature)] is TFeature feature ? feature : default;

    public void Set<TFeature>(TFeature? instance) => this[typeof(TFeature)] = instance;

    public IEnumerator<KeyValuePair<Type, object>> GetEnumerator()
    {
        for (var i = 0; i < _count; i++)
        {
            yield return _features![i];
        }
    }

    IEnumerator IEnumerable.GetEnumerator() => GetEnumerator();
}
