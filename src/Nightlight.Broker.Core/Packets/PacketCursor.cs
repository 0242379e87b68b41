using System.Buffers.Binary;

namespace Nightlight.Broker.Core.Packets;

/// <summary>Reads MQTT's primitive types from one packet's bytes; every read says whether the bytes were there.</summary>
ref struct PacketCursor(ReadOnlySpan<byte> span)
{
    readonly ReadOnlySpan<byte> _span = span;
    int _position;

    public readonly int Remaining => _span.Length - _position;

    public bool TryByte(out byte value)
    {
        if (_position >= _span.Length)
        {
            value = 0;
            return false;
        }
        value = _span[_position++];
        return true;
    }

    public bool TryUInt16(out ushort value)
    {
        if (Remaining < 2)
        {
            value = 0;
            return false;
        }
        value = BinaryPrimitives.ReadUInt16BigEndian(_span[_position..]);
        _position += 2;
        return true;
    }

    public bool TryUInt32(out uint value)
    {
        if (Remaining < 4)
        {
            value = 0;
            return false;
        }
        value = BinaryPrimitives.ReadUInt32BigEndian(_span[_position..]);
        _position += 4;
        return true;
    }

    /// <summary>A variable byte integer: at most four bytes, so at most 268,435,455.</summary>
    public bool TryVariableInt(out uint value)
    {
        value = 0;
        for (var i = 0; i < 4; i++)
        {
            if (_position >= _span.Length)
            {
                return false;
            }
            var b = _span[_position++];
            value |= (uint)(b & 0x7F) << (7 * i);
            if ((b & 0x80) == 0)
            {
                return true;
            }
        }
        return false;
    }

    public bool TryBytes(int count, out ReadOnlySpan<byte> value)
    {
        if (count < 0 || Remaining < count)
        {
            value = default;
            return false;
        }
        value = _span.Slice(_position, count);
        _position += count;
        return true;
    }

    /// <summary>Two bytes of length, then that many bytes (UTF-8 strings and binary data).</summary>
    public bool TryPrefixed(out ReadOnlySpan<byte> value)
    {
        if (!TryUInt16(out var length))
        {
            value = default;
            return false;
        }
        return TryBytes(length, out value);
    }

    public ReadOnlySpan<byte> Rest()
    {
        var rest = _span[_position..];
        _position = _span.Length;
        return rest;
    }
}
