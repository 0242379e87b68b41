using System.Runtime.CompilerServices;
using System.Text.Json;
using System.Text.Unicode;

namespace Nightlight.Protocol;

/// <summary>
/// Strict, total parser for <c>{id}/telemetry</c> payloads. It never throws for bad input: it returns false and
/// a one-line reason fit for a log line.
/// </summary>
public static class TelemetryParser
{
    /// <summary>Largest payload accepted, in bytes. A lesson reading is about 15 bytes.</summary>
    public const int MaxPayloadBytes = 8 * 1024;

    /// <summary>Largest light level accepted: above any raw ADC count and brighter than full sunlight in lux.</summary>
    public const double MaxLight = 1_000_000;

    /// <summary>Most fields one reading may carry.</summary>
    public const int MaxFields = 32;

    /// <summary>Nesting accepted inside a payload; readings are flat, so a little room for extras only.</summary>
    public const int MaxDepth = 4;

    /// <summary>Largest <c>epoch</c> accepted: 2^53 − 1, the largest integer a JSON number keeps exactly as a double.</summary>
    public const long MaxEpoch = (1L << 53) - 1;

    /// <summary>Longest measurement name, in characters.</summary>
    public const int MaxFieldNameLength = 64;

    static readonly JsonReaderOptions ReaderOptions = new()
    {
        MaxDepth = MaxDepth,
        AllowTrailingCommas = false,
        CommentHandling = JsonCommentHandling.Disallow,
    };

    /// <summary>Parses one telemetry payload from <paramref name="deviceId"/>.</summary>
    /// <returns>True with <paramref name="message"/> set, or false with <paramref name="error"/> saying what is wrong.</returns>
    /// <remarks>
    /// It reads the payload twice with <see cref="Utf8JsonReader"/>, first only to check it is one well-formed JSON value
    /// (so a syntax error is reported before anything about the fields), then for the fields. A server parses every
    /// reading: this allocates the message, its measurements and the names of unusual measurements, nothing else.
    /// </remarks>
    public static bool TryParse(string deviceId, ReadOnlySpan<byte> payload, out TelemetryMessage message, out string error)
    {
        message = null!;
        if (payload.Length == 0)
        {
            error = "empty payload";
            return false;
        }
        if (payload.Length > MaxPayloadBytes)
        {
            error = $"payload of {payload.Length} bytes is over the {MaxPayloadBytes}-byte limit";
            return false;
        }
        if (!Utf8.IsValid(payload))
        {
            error = "payload is not valid UTF-8";
            return false;
        }
        try
        {
            var check = new Utf8JsonReader(payload, ReaderOptions);
            while (check.Read())
            {
            }
        }
        catch (JsonException e) when (e.Message.Contains("depth", StringComparison.Ordinal))
        {
            error = $"payload is nested deeper than {MaxDepth} levels";
            return false;
        }
        catch (JsonException e)
        {
            error = $"payload is not JSON ({FirstSentence(e.Message)})";
            return false;
        }
        var reader = new Utf8JsonReader(payload, ReaderOptions);
        return TryRead(deviceId, ref reader, out message, out error);
    }

    /// <summary>Room for the names of a reading's fields, to find one that appears twice without a set per reading.</summary>
    [InlineArray(MaxFields)]
    struct FieldNames
    {
        string? _first;
    }

    static bool TryRead(string deviceId, ref Utf8JsonReader reader, out TelemetryMessage message, out string error)
    {
        message = null!;
        reader.Read();
        if (reader.TokenType != JsonTokenType.StartObject)
        {
            error = $"payload is a JSON {KindName(reader.TokenType)}, not an object";
            return false;
        }

        var measurements = new Measurements();
        long? seq = null;
        long? epoch = null;
        DateTimeOffset? timestamp = null;
        var fields = 0;
        var names = new FieldNames();
        while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
        {
            if (fields == MaxFields)
            {
                error = $"more than {MaxFields} fields";
                return false;
            }
            var name = FieldName(ref reader);
            for (var i = 0; i < fields; i++)
            {
                if (string.Equals(names[i], name, StringComparison.Ordinal))
                {
                    error = $"field \"{Printable(name)}\" appears twice";
                    return false;
                }
            }
            names[fields++] = name;
            reader.Read();
            switch (name)
            {
                case "seq":
                    if (reader.TokenType != JsonTokenType.Number || !reader.TryGetInt64(out var s) || s < 0)
                    {
                        error = "\"seq\" is not a non-negative integer";
                        return false;
                    }
                    seq = s;
                    break;
                case "epoch":
                    if (reader.TokenType != JsonTokenType.Number || !reader.TryGetInt64(out var e) || e is < 0 or > MaxEpoch)
                    {
                        error = $"\"epoch\" is not an integer from 0 to {MaxEpoch}";
                        return false;
                    }
                    epoch = e;
                    break;
                case "ts":
                    if (!TryReadTimestamp(ref reader, out var ts))
                    {
                        error = "\"ts\" is neither an ISO 8601 time nor Unix milliseconds";
                        return false;
                    }
                    timestamp = ts;
                    break;
                default:
                    if (reader.TokenType != JsonTokenType.Number)
                    {
                        if (name == "light")
                        {
                            error = $"\"light\" is a {KindName(reader.TokenType)}, not a number";
                            return false;
                        }
                        // Extra non-numeric fields are additive and ignored, as the wire contract allows.
                        reader.Skip();
                        break;
                    }
                    if (name.Length is 0 or > MaxFieldNameLength || HasControl(name))
                    {
                        error = "a measurement name is empty, too long or has control characters";
                        return false;
                    }
                    if (!reader.TryGetDouble(out var value) || !double.IsFinite(value))
                    {
                        error = $"\"{name}\" is not a finite number";
                        return false;
                    }
                    measurements.Set(name, value);
                    break;
            }
        }

        if (epoch is not null && seq is null)
        {
            error = "\"epoch\" without \"seq\": an epoch numbers nothing on its own";
            return false;
        }
        if (measurements.Count == 0)
        {
            error = "\"light\" is missing, and there is no other measurement";
            return false;
        }
        // A reading without light (a thermostat's) is valid; rules that need light skip it.
        double? light = measurements.TryGetValue("light", out var l) ? l : null;
        if (light < 0)
        {
            error = $"\"light\" is negative ({Wire.FormatNumber(l)})";
            return false;
        }
        if (light > MaxLight)
        {
            error = $"\"light\" is {Wire.FormatNumber(l)}, above the plausible maximum {Wire.FormatNumber(MaxLight)}";
            return false;
        }

        message = new TelemetryMessage(deviceId, light, measurements, seq, timestamp) { Epoch = epoch ?? 0 };
        error = "";
        return true;
    }

    /// <summary>The field name under the reader; the names devices send most are the same string every time.</summary>
    static string FieldName(ref Utf8JsonReader reader) =>
        reader.ValueTextEquals("light"u8) ? "light"
        : reader.ValueTextEquals("seq"u8) ? "seq"
        : reader.ValueTextEquals("ts"u8) ? "ts"
        : reader.ValueTextEquals("epoch"u8) ? "epoch"
        : reader.ValueTextEquals("temperature"u8) ? "temperature"
        : reader.ValueTextEquals("humidity"u8) ? "humidity"
        : reader.GetString()!;

    static bool HasControl(string name)
    {
        foreach (var c in name)
        {
            if (char.IsControl(c))
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>The token's kind as <see cref="JsonValueKind"/> names it, in lower case.</summary>
    static string KindName(JsonTokenType token) => token switch
    {
        JsonTokenType.StartObject => "object",
        JsonTokenType.StartArray => "array",
        JsonTokenType.String => "string",
        JsonTokenType.Number => "number",
        JsonTokenType.True => "true",
        JsonTokenType.False => "false",
        JsonTokenType.Null => "null",
        _ => "undefined",
    };

    static bool TryReadTimestamp(ref Utf8JsonReader reader, out DateTimeOffset timestamp)
    {
        timestamp = default;
        switch (reader.TokenType)
        {
            case JsonTokenType.String:
                return TryParseTimestamp(reader.GetString(), out timestamp);
            case JsonTokenType.Number when reader.TryGetInt64(out var ms):
                return TryFromUnixMilliseconds(ms, out timestamp);
            default:
                if (reader.TokenType is JsonTokenType.StartObject or JsonTokenType.StartArray)
                {
                    reader.Skip();
                }
                return false;
        }
    }

    internal static bool TryReadTimestamp(JsonElement value, out DateTimeOffset timestamp)
    {
        timestamp = default;
        return value.ValueKind switch
        {
            JsonValueKind.String => TryParseTimestamp(value.GetString(), out timestamp),
            JsonValueKind.Number when value.TryGetInt64(out var ms) => TryFromUnixMilliseconds(ms, out timestamp),
            _ => false,
        };
    }

    // A ts is ISO 8601 text (UTC unless it says otherwise) or Unix milliseconds up to the end of year 9999.
    static bool TryParseTimestamp(string? text, out DateTimeOffset timestamp) =>
        DateTimeOffset.TryParse(text, System.Globalization.CultureInfo.InvariantCulture, System.Globalization.DateTimeStyles.AssumeUniversal, out timestamp);

    static bool TryFromUnixMilliseconds(long ms, out DateTimeOffset timestamp)
    {
        var valid = ms is >= 0 and <= 253402300799999;
        timestamp = valid ? DateTimeOffset.FromUnixTimeMilliseconds(ms) : default;
        return valid;
    }

    static string FirstSentence(string message)
    {
        var end = message.IndexOf(". ", StringComparison.Ordinal);
        return end > 0 ? message[..end] : message.TrimEnd('.');
    }

    /// <summary>Makes untrusted text safe for one log line: control characters become '?', length is capped.</summary>
    public static string Printable(string text, int max = 64)
    {
        var chars = text.Length > max ? text[..max].ToCharArray() : text.ToCharArray();
        for (var i = 0; i < chars.Length; i++)
        {
            if (char.IsControl(chars[i]))
            {
                chars[i] = '?';
            }
        }
        return new string(chars) + (text.Length > max ? "…" : "");
    }
}
