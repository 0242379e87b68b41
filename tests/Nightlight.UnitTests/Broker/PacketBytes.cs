using System.Buffers;
using System.Text;
using Nightlight.Broker.Core.Packets;

namespace Nightlight.Tests.Broker;

/// <summary>Builds raw MQTT packets byte by byte, so tests can say exactly what goes on the wire, bad bytes included.</summary>
static class PacketBytes
{
    public static byte[] Packet(byte first, params byte[][] parts)
    {
        var body = parts.SelectMany(p => p).ToArray();
        return [first, .. RemainingLength(body.Length), .. body];
    }

    public static byte[] RemainingLength(int value)
    {
        var bytes = new List<byte>();
        do
        {
            var b = (byte)(value % 128);
            value /= 128;
            bytes.Add(value > 0 ? (byte)(b | 0x80) : b);
        }
        while (value > 0);
        return [.. bytes];
    }

    public static byte[] Str(string value) => Bin(Encoding.UTF8.GetBytes(value));

    public static byte[] Bin(params byte[] value) => [(byte)(value.Length >> 8), (byte)value.Length, .. value];

    public static byte[] U16(int value) => [(byte)(value >> 8), (byte)value];

    public static byte[] U32(uint value) => [(byte)(value >> 24), (byte)(value >> 16), (byte)(value >> 8), (byte)value];

    public static byte[] B(params byte[] value) => value;

    /// <summary>An MQTT 5 property block: its length, then the properties.</summary>
    public static byte[] Props(params byte[][] properties)
    {
        var all = properties.SelectMany(p => p).ToArray();
        return [.. RemainingLength(all.Length), .. all];
    }

    public static byte[] Hex(string hex) => Convert.FromHexString(hex.Replace(" ", ""));

    /// <summary>CONNECT with the given flags and, for 5, properties; the payload is the client id <c>c</c> plus <paramref name="payload"/>.</summary>
    public static byte[] Connect(MqttVersion version, byte flags, byte[]? properties = null, params byte[][] payload)
    {
        var header = version == MqttVersion.V310 ? Str("MQIsdp") : Str("MQTT");
        byte[] props = version == MqttVersion.V500 ? properties ?? [0] : [];
        return Packet(0x10, [header, B((byte)version, flags), U16(60), props, Str("c"), .. payload]);
    }

    /// <summary>The bytes split into segments at the given cut points: a receive buffer as Kestrel hands it over.</summary>
    public static ReadOnlySequence<byte> Segmented(byte[] bytes, params int[] cuts)
    {
        var points = cuts.Where(c => c > 0 && c < bytes.Length).Distinct().Order().ToList();
        if (points.Count == 0)
        {
            return new ReadOnlySequence<byte>(bytes);
        }
        var starts = new List<int> { 0 };
        starts.AddRange(points);
        Segment? first = null;
        Segment? last = null;
        for (var i = 0; i < starts.Count; i++)
        {
            var end = i + 1 < starts.Count ? starts[i + 1] : bytes.Length;
            var memory = bytes.AsMemory(starts[i], end - starts[i]).ToArray();
            if (first is null)
            {
                first = last = new Segment(memory, 0);
            }
            else
            {
                last = last!.Append(memory);
            }
        }
        return new ReadOnlySequence<byte>(first!, 0, last!, last!.Memory.Length);
    }

    sealed class Segment : ReadOnlySequenceSegment<byte>
    {
        public Segment(ReadOnlyMemory<byte> memory, long runningIndex)
        {
            Memory = memory;
            RunningIndex = runningIndex;
        }

        public Segment Append(ReadOnlyMemory<byte> memory)
        {
            var next = new Segment(memory, RunningIndex + Memory.Length);
            Next = next;
            return next;
        }
    }
}
