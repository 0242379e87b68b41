using System.Buffers;
using System.Text.Json;
using Nightlight.Protocol;

namespace Nightlight.Server.Storage;

/// <summary>The <c>measurements</c> column: a flat JSON object of numbers, <c>{"light":412,"temperature":18.5}</c>.</summary>
public static class MeasurementsJson
{
    // One buffer and writer per thread: a batch writes this once per reading, and a new writer each time cost more
    // than the JSON itself.
    [ThreadStatic]
    static (ArrayBufferWriter<byte> Buffer, Utf8JsonWriter Writer)? t_writer;

    public static string Write(Measurements measurements) => System.Text.Encoding.UTF8.GetString(WriteUtf8(measurements));

    /// <summary>The JSON as UTF-8 in this thread's buffer: valid until this thread's next call.</summary>
    public static ReadOnlySpan<byte> WriteUtf8(Measurements measurements)
    {
        if (t_writer is not var (buffer, writer))
        {
            buffer = new ArrayBufferWriter<byte>(256);
            writer = new Utf8JsonWriter(buffer);
            t_writer = (buffer, writer);
        }
        buffer.ResetWrittenCount();
        writer.Reset(buffer);
        writer.WriteStartObject();
        foreach (var (name, value) in measurements)
        {
            writer.WriteNumber(name, value);
        }
        writer.WriteEndObject();
        writer.Flush();
        return buffer.WrittenSpan;
    }

    public static Measurements Read(string json)
    {
        var result = new List<KeyValuePair<string, double>>();
        using var document = JsonDocument.Parse(json);
        foreach (var property in document.RootElement.EnumerateObject())
        {
            if (property.Value.ValueKind == JsonValueKind.Number)
            {
                result.Add(new(property.Name, property.Value.GetDouble()));
            }
        }
        return new Measurements(result);
    }
}
