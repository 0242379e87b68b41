using System.Text;
using System.Text.Json;

namespace Nightlight.Protocol;

/// <summary>A command for a nightlight: switch the LED on or off. Extra fields on the wire are ignored.</summary>
/// <param name="LedOn">True to switch the LED on.</param>
public sealed record CommandMessage(bool LedOn)
{
    /// <summary>Largest command payload a device accepts, in bytes.</summary>
    public const int MaxPayloadBytes = 8 * 1024;

    static readonly byte[] On = Encoding.UTF8.GetBytes("{\"led_on\": true}");
    static readonly byte[] Off = Encoding.UTF8.GetBytes("{\"led_on\": false}");

    /// <summary>The payload exactly as the lesson's server sends it: <c>{"led_on": true}</c>.</summary>
    public ReadOnlyMemory<byte> ToPayload() => LedOn ? On : Off;

    /// <summary>The payload as text, for lesson-style log lines.</summary>
    public override string ToString() => LedOn ? "{\"led_on\": true}" : "{\"led_on\": false}";

    /// <summary>Parses a command payload. Never throws for bad input.</summary>
    public static bool TryParse(ReadOnlySpan<byte> payload, out CommandMessage command, out string error)
    {
        command = null!;
        if (payload.Length == 0 || payload.Length > MaxPayloadBytes)
        {
            error = payload.Length == 0 ? "empty payload" : $"payload of {payload.Length} bytes is over the limit";
            return false;
        }
        try
        {
            var reader = new Utf8JsonReader(payload, new JsonReaderOptions { MaxDepth = 4 });
            using var document = JsonDocument.ParseValue(ref reader);
            if (document.RootElement.ValueKind != JsonValueKind.Object)
            {
                error = "payload is not a JSON object";
                return false;
            }
            if (!document.RootElement.TryGetProperty("led_on", out var ledOn) ||
                ledOn.ValueKind is not (JsonValueKind.True or JsonValueKind.False))
            {
                error = "\"led_on\" is missing or not true/false";
                return false;
            }
            command = new CommandMessage(ledOn.GetBoolean());
            error = "";
            return true;
        }
        catch (JsonException e)
        {
            error = $"payload is not JSON ({e.Message.Split(". ")[0]})";
            return false;
        }
    }
}

/// <summary>Writes telemetry payloads the way the lesson's device does: <c>{"light": 412}</c>.</summary>
public static class TelemetryWriter
{
    /// <summary>Lesson payload, plus <c>seq</c> and <c>ts</c> (Unix milliseconds) when given.</summary>
    public static byte[] Write(double light, long? seq = null, DateTimeOffset? timestamp = null)
    {
        var text = new StringBuilder("{\"light\": ").Append(Wire.FormatNumber(light));
        if (seq is { } s)
        {
            text.Append(", \"seq\": ").Append(s);
        }
        if (timestamp is { } ts)
        {
            text.Append(", \"ts\": ").Append(ts.ToUnixTimeMilliseconds());
        }
        return Encoding.UTF8.GetBytes(text.Append('}').ToString());
    }
}
