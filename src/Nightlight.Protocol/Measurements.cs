using System.Collections;
using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;

namespace Nightlight.Protocol;

/// <summary>
/// A reading's measurements by name, in the order the device sent them, read-only once built. A reading carries one
/// to a few measurements, so up to two are kept inside this one object and a name is found by comparing it with each;
/// more go to arrays. A server handles every reading several times over (rules, registry, store, dashboard): a
/// <see cref="Dictionary{TKey, TValue}"/> cost three objects per reading and a boxed enumerator per pass over it, where
/// this costs one object and a struct enumerator.
/// </summary>
public sealed class Measurements : IReadOnlyDictionary<string, double>
{
    const int Inline = 2;

    InlineNames _names;
    InlineValues _values;
    string[]? _moreNames;
    double[]? _moreValues;
    int _count;

    /// <summary>No measurements yet; the parser adds them.</summary>
    internal Measurements()
    {
    }

    /// <summary>A copy of <paramref name="measurements"/>, in their order.</summary>
    public Measurements(IEnumerable<KeyValuePair<string, double>> measurements)
    {
        foreach (var (name, value) in measurements)
        {
            Set(name, value);
        }
    }

    /// <summary>One measurement: <c>{"light": 412}</c> is <c>Measurements.Of("light", 412)</c>.</summary>
    public static Measurements Of(string name, double value)
    {
        var one = new Measurements();
        one.Set(name, value);
        return one;
    }

    /// <summary>Lets code and tests write a dictionary where measurements are expected.</summary>
    public static implicit operator Measurements(Dictionary<string, double> measurements) => new(measurements);

    /// <inheritdoc/>
    public int Count => _count;

    /// <summary>The name of the measurement at <paramref name="index"/> (0 to <see cref="Count"/> − 1), in the order sent.</summary>
    public string NameAt(int index) => index < Inline ? _names[index]! : _moreNames![index - Inline];

    /// <summary>The value of the measurement at <paramref name="index"/>.</summary>
    public double ValueAt(int index) => index < Inline ? _values[index] : _moreValues![index - Inline];

    /// <inheritdoc/>
    public double this[string key] => TryGetValue(key, out var value) ? value : throw new KeyNotFoundException($"no measurement named '{key}'");

    /// <inheritdoc/>
    public IEnumerable<string> Keys
    {
        get
        {
            for (var i = 0; i < _count; i++)
            {
                yield return NameAt(i);
            }
        }
    }

    /// <inheritdoc/>
    public IEnumerable<double> Values
    {
        get
        {
            for (var i = 0; i < _count; i++)
            {
                yield return ValueAt(i);
            }
        }
    }

    /// <inheritdoc/>
    public bool ContainsKey(string key) => IndexOf(key) >= 0;

    /// <inheritdoc/>
    public bool TryGetValue(string key, [MaybeNullWhen(false)] out double value)
    {
        var index = IndexOf(key);
        value = index < 0 ? 0 : ValueAt(index);
        return index >= 0;
    }

    int IndexOf(string name)
    {
        for (var i = 0; i < _count; i++)
        {
            if (string.Equals(NameAt(i), name, StringComparison.Ordinal))
            {
                return i;
            }
        }
        return -1;
    }

    /// <summary>Sets <paramref name="name"/> to <paramref name="value"/>: a new name goes last, a known one keeps its place.</summary>
    internal void Set(string name, double value)
    {
        ArgumentNullException.ThrowIfNull(name);
        var index = IndexOf(name);
        if (index < 0)
        {
            index = _count++;
            if (index >= Inline)
            {
                var more = index - Inline;
                if (_moreNames is null || more == _moreNames.Length)
                {
                    Array.Resize(ref _moreNames, Math.Max(4, more * 2));
                    Array.Resize(ref _moreValues, _moreNames.Length);
                }
                _moreNames[more] = name;
            }
            else
            {
                _names[index] = name;
            }
        }
        if (index < Inline)
        {
            _values[index] = value;
        }
        else
        {
            _moreValues![index - Inline] = value;
        }
    }

    /// <summary>The measurements in the order sent; <c>foreach</c> over this type allocates nothing.</summary>
    public Enumerator GetEnumerator() => new(this);

    IEnumerator<KeyValuePair<string, double>> IEnumerable<KeyValuePair<string, double>>.GetEnumerator() => GetEnumerator();

    IEnumerator IEnumerable.GetEnumerator() => GetEnumerator();

    /// <summary>The measurements in the order sent, without an object per pass.</summary>
    public struct Enumerator(Measurements measurements) : IEnumerator<KeyValuePair<string, double>>
    {
        int _index = -1;

        /// <inheritdoc/>
        public readonly KeyValuePair<string, double> Current => new(measurements.NameAt(_index), measurements.ValueAt(_index));

        readonly object IEnumerator.Current => Current;

        /// <inheritdoc/>
        public bool MoveNext() => ++_index < measurements._count;

        /// <inheritdoc/>
        public void Reset() => _index = -1;

        /// <inheritdoc/>
        public readonly void Dispose()
        {
        }
    }

    [InlineArray(Inline)]
    struct InlineNames
    {
        string? _first;
    }

    [InlineArray(Inline)]
    struct InlineValues
    {
        double _first;
    }
}
