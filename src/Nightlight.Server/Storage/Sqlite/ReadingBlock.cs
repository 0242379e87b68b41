using System.Buffers.Binary;
using System.Text;
using Nightlight.Protocol;

namespace Nightlight.Server.Storage.Sqlite;

/// <summary>
/// Several readings of one device packed into one row of SQLite's <c>reading_blocks</c>, so a batch from a thousand
/// devices inserts into the index a thousand times a few seconds, not once per reading
/// (docs/benchmarks/storage.md#reading-blocks).
/// Readings are appended in arrival order; a block holds readings whose times lie within <see cref="MaxSpanMs"/> of each
/// other, so a range query finds every block it needs from the block's first time alone.
/// </summary>
/// <remarks>
/// Each reading: a flags byte (1: has a seq; 2: its epoch differs from the reading's before, 0 for the first, and
/// follows as a varint after the seq), its time as a zig-zag varint difference from the reading before (from 0
/// for the first), arrival minus time as a zig-zag varint, the seq as a zig-zag varint difference from the seq before,
/// the count of measurements, and for each a name number and an 8-byte little-endian double. A name number equal to the
/// count of names seen so far in the block introduces a new name: its UTF-8 length as a varint, then its bytes.
/// </remarks>
public sealed class ReadingBlock
{
    /// <summary>
    /// The most a block's times may differ. Queries rely on it to bound their scan, so it may grow in a later version
    /// only together with them, never shrink.
    /// </summary>
    public const long MaxSpanMs = 60_000;

    /// <summary>The size a block stops taking readings at: a few fit one 4 KB SQLite page, so rewriting one is cheap.</summary>
    public const int MaxBytes = 1024;

    byte[] _data;
    int _length;
    readonly List<string> _names = [];
    long _previousTs;
    long _previousSeq;
    long _previousEpoch;

    public ReadingBlock(int capacity = 64) => _data = new byte[capacity];

    /// <summary>Readings in the block.</summary>
    public int Count { get; private set; }

    /// <summary>The earliest reading time, Unix milliseconds (undefined while <see cref="Count"/> is 0).</summary>
    public long FirstTs { get; private set; }

    /// <summary>The latest reading time, Unix milliseconds.</summary>
    public long LastTs { get; private set; }

    /// <summary>The encoded readings, valid until the block changes.</summary>
    public ReadOnlySpan<byte> Data => _data.AsSpan(0, _length);

    /// <summary>Empties the block and keeps its buffer.</summary>
    public void Clear()
    {
        _length = 0;
        _names.Clear();
        _previousTs = 0;
        _previousSeq = 0;
        _previousEpoch = 0;
        Count = 0;
    }

    /// <summary>
    /// Appends a reading unless the block is full or the reading's time lies too far from the others; an empty block
    /// takes any reading.
    /// </summary>
    public bool TryAdd(long ts, long arrived, long? seq, long epoch, Measurements measurements)
    {
        if (Count > 0 && (_length >= MaxBytes || Math.Max(LastTs, ts) - Math.Min(FirstTs, ts) > MaxSpanMs))
        {
            return false;
        }
        Add(ts, arrived, seq, epoch, measurements);
        return true;
    }

    /// <summary>Appends a stored reading whatever the block's size (see the overload below).</summary>
    public void Add(StoredReading reading) =>
        Add(reading.Ts.ToUnixTimeMilliseconds(), reading.Arrived.ToUnixTimeMilliseconds(), reading.Seq, reading.Epoch, reading.Measurements);

    /// <summary>Appends a reading whatever the block's size; the caller keeps the block's times within <see cref="MaxSpanMs"/>.</summary>
    public void Add(long ts, long arrived, long? seq, long epoch, Measurements measurements)
    {
        Reserve(1 + 4 * 10 + 10 + measurements.Count * (10 + 8));
        // A block's readings mostly share one epoch: it is written only where it changes.
        var newEpoch = seq is not null && epoch != _previousEpoch;
        _data[_length++] = (byte)((seq is null ? 0 : 1) | (newEpoch ? 2 : 0));
        WriteSigned(ts - _previousTs);
        WriteSigned(arrived - ts);
        if (seq is { } s)
        {
            WriteSigned(s - _previousSeq);
            _previousSeq = s;
        }
        if (newEpoch)
        {
            WriteUnsigned((ulong)epoch);
            _previousEpoch = epoch;
        }
        _previousTs = ts;
        WriteUnsigned((ulong)measurements.Count);
        for (var i = 0; i < measurements.Count; i++)
        {
            var name = measurements.NameAt(i);
            var number = _names.IndexOf(name);
            if (number < 0)
            {
                WriteUnsigned((ulong)_names.Count);
                var bytes = Encoding.UTF8.GetByteCount(name);
                Reserve(10 + bytes + 8);
                WriteUnsigned((ulong)bytes);
                _length += Encoding.UTF8.GetBytes(name, _data.AsSpan(_length));
                _names.Add(name);
            }
            else
            {
                WriteUnsigned((ulong)number);
            }
            BinaryPrimitives.WriteDoubleLittleEndian(_data.AsSpan(_length), measurements.ValueAt(i));
            _length += 8;
        }
        FirstTs = Count == 0 ? ts : Math.Min(FirstTs, ts);
        LastTs = Count == 0 ? ts : Math.Max(LastTs, ts);
        Count++;
    }

    void Reserve(int bytes)
    {
        if (_length + bytes > _data.Length)
        {
            // Doubling, but not far past the size a block closes at: a thousand open blocks stay about a megabyte.
            Array.Resize(ref _data, Math.Max(Math.Min(_data.Length * 2, MaxBytes + 128), _length + bytes));
        }
    }

    void WriteSigned(long value) => WriteUnsigned((ulong)((value << 1) ^ (value >> 63)));

    void WriteUnsigned(ulong value)
    {
        while (value >= 0x80)
        {
            _data[_length++] = (byte)(value | 0x80);
            value >>= 7;
        }
        _data[_length++] = (byte)value;
    }

    /// <summary>The readings of an encoded block, in the order they were appended.</summary>
    /// <exception cref="InvalidDataException">The bytes are not a block this version wrote.</exception>
    public static List<StoredReading> Decode(string deviceId, byte[] data)
    {
        var readings = new List<StoredReading>();
        var reader = new Reader();
        reader.Reset(deviceId, data);
        while (reader.MoveNext())
        {
            readings.Add(reader.Reading());
        }
        return readings;
    }

    /// <summary>
    /// Reads a block's readings one at a time into fields it reuses: a history query over a million readings then
    /// allocates nothing per reading.
    /// </summary>
    public sealed class Reader
    {
        readonly List<string> _names = [];
        readonly List<int> _numbers = [];
        readonly List<double> _values = [];
        string _deviceId = "";
        byte[] _data = [];
        int _at;
        long _previousSeq;
        long _previousEpoch;

        /// <summary>Reading time of the current reading, Unix milliseconds.</summary>
        public long Ts { get; private set; }

        /// <summary>Arrival time of the current reading, Unix milliseconds.</summary>
        public long Arrived { get; private set; }

        public long? Seq { get; private set; }

        /// <summary>Epoch of the current reading's seq; 0 without a seq.</summary>
        public long Epoch { get; private set; }

        /// <summary>Starts on another block.</summary>
        public void Reset(string deviceId, byte[] data)
        {
            (_deviceId, _data, _at, _previousSeq, _previousEpoch, Ts) = (deviceId, data, 0, 0, 0, 0);
            _names.Clear();
        }

        /// <summary>Reads the next reading; false at the block's end.</summary>
        /// <exception cref="InvalidDataException">The bytes are not a block this version wrote.</exception>
        public bool MoveNext()
        {
            if (_at >= _data.Length)
            {
                return false;
            }
            var flags = Byte();
            Ts += Signed();
            Arrived = Ts + Signed();
            Seq = null;
            Epoch = 0;
            if ((flags & 1) != 0)
            {
                _previousSeq += Signed();
                Seq = _previousSeq;
                if ((flags & 2) != 0)
                {
                    _previousEpoch = (long)Unsigned();
                }
                Epoch = _previousEpoch;
            }
            var count = (int)Unsigned();
            _numbers.Clear();
            _values.Clear();
            for (var i = 0; i < count; i++)
            {
                var number = (int)Unsigned();
                if (number == _names.Count)
                {
                    _names.Add(Utf8((int)Unsigned()));
                }
                else if (number > _names.Count)
                {
                    throw new InvalidDataException($"reading block of {_deviceId}: measurement name {number} of {_names.Count}");
                }
                _numbers.Add(number);
                _values.Add(Double());
            }
            return true;
        }

        /// <summary>The current reading's value of <paramref name="name"/>, if it has one.</summary>
        public bool TryGetValue(string name, out double value)
        {
            for (var i = 0; i < _numbers.Count; i++)
            {
                if (string.Equals(_names[_numbers[i]], name, StringComparison.Ordinal))
                {
                    value = _values[i];
                    return true;
                }
            }
            value = 0;
            return false;
        }

        /// <summary>The current reading as a record of its own.</summary>
        public StoredReading Reading()
        {
            var measurements = new List<KeyValuePair<string, double>>(_numbers.Count);
            for (var i = 0; i < _numbers.Count; i++)
            {
                measurements.Add(new(_names[_numbers[i]], _values[i]));
            }
            return new StoredReading(_deviceId, DateTimeOffset.FromUnixTimeMilliseconds(Ts), DateTimeOffset.FromUnixTimeMilliseconds(Arrived), Seq,
                new Measurements(measurements)) { Epoch = Epoch };
        }

        byte Byte() => _at < _data.Length ? _data[_at++] : throw Truncated();

        ulong Unsigned()
        {
            ulong value = 0;
            for (var shift = 0; shift < 64; shift += 7)
            {
                var b = Byte();
                value |= (ulong)(b & 0x7F) << shift;
                if (b < 0x80)
                {
                    return value;
                }
            }
            throw new InvalidDataException($"reading block of {_deviceId}: varint longer than 64 bits");
        }

        long Signed()
        {
            var value = Unsigned();
            return (long)(value >> 1) ^ -(long)(value & 1);
        }

        double Double()
        {
            if (_at + 8 > _data.Length)
            {
                throw Truncated();
            }
            var value = BinaryPrimitives.ReadDoubleLittleEndian(_data.AsSpan(_at));
            _at += 8;
            return value;
        }

        string Utf8(int length)
        {
            if (length < 0 || _at + length > _data.Length)
            {
                throw Truncated();
            }
            var value = Encoding.UTF8.GetString(_data, _at, length);
            _at += length;
            return value;
        }

        InvalidDataException Truncated() => new($"reading block of {_deviceId}: ends inside a reading");
    }
}
