using System.Text;
using System.Text.Json;

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

    /// <summary>Longest measurement name, in characters.</summary>
    public const int MaxFieldNameLength = 64;

    static readonly JsonDocumentOptions DocumentOptions = new()
    {
        MaxDepth = MaxDepth,
        AllowTrailingCommas = false,
        CommentHandling = JsonCommentHandling.Disallow,
    };

    static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    /// <summary>Parses one telemetry payload from <paramref name="deviceId"/>.</summary>
    /// <returns>True with <paramref name="message"/> set, or false with <paramref name="error"/> saying what is wrong.</returns>
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
        try
        {
            StrictUtf8.GetCharCount(payload);
        }
        catch (DecoderFallbackException)
        {
            error = "payload is not valid UTF-8";
            return false;
        }

        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(payload.ToArray(), DocumentOptions);
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

        using (document)
        {
            return TryRead(deviceId, document.RootElement, out message, out error);
        }
    }

    static bool TryRead(string deviceId, JsonElement root, out TelemetryMessage message, out string error)
    {
        message = null!;
        if (root.ValueKind != JsonValueKind.Object)
        {
            error = $"payload is a JSON {root.ValueKind.ToString().ToLowerInvariant()}, not an object";
            return false;
        }

        var measurements = new Dictionary<string, double>(StringComparer.Ordinal);
        long? seq = null;
        DateTimeOffset? timestamp = null;
        var fields = 0;
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var property in root.EnumerateObject())
        {
            if (++fields > MaxFields)
            {
                error = $"more than {MaxFields} fields";
                return false;
            }
            var name = property.Name;
            if (!seen.Add(name))
            {
                error = $"field \"{Printable(name)}\" appears twice";
                return false;
            }
            switch (name)
            {
                case "seq":
                    if (property.Value.ValueKind != JsonValueKind.Number || !property.Value.TryGetInt64(out var s) || s < 0)
                    {
                        error = "\"seq\" is not a non-negative integer";
                        return false;
                    }
                    seq = s;
                    break;
                case "ts":
                    if (!TryReadTimestamp(property.Value, out var ts))
                    {
                        error = "\"ts\" is neither an ISO 8601 time nor Unix milliseconds";
                        return false;
                    }
                    timestamp = ts;
                    break;
                default:
                    if (property.Value.ValueKind != JsonValueKind.Number)
                    {
                        if (name == "light")
                        {
                            error = $"\"light\" is a {property.Value.ValueKind.ToString().ToLowerInvariant()}, not a number";
                            return false;
                        }
                        // Extra non-numeric fields are additive and ignored, as the wire contract allows.
                        break;
                    }
                    if (name.Length is 0 or > MaxFieldNameLength || name.Any(char.IsControl))
                    {
                        error = "a measurement name is empty, too long or has control characters";
                        return false;
                    }
                    if (!property.Value.TryGetDouble(out var value) || !double.IsFinite(value))
                    {
                        error = $"\"{name}\" is not a finite number";
                        return false;
                    }
                    measurements[name] = value;
                    break;
            }
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

        message = new TelemetryMessage(deviceId, light, measurements, seq, timestamp);
        error = "";
        return true;
    }

    internal static bool TryReadTimestamp(JsonElement value, out DateTimeOffset timestamp)
    {
        timestamp = default;
        switch (value.ValueKind)
        {
            case JsonValueKind.String:
                return DateTimeOffset.TryParse(value.GetString(), System.Globalization.CultureInfo.InvariantCulture,
                    System.Globalization.DateTimeStyles.AssumeUniversal, out timestamp);
            case JsonValueKind.Number when value.TryGetInt64(out var ms) && ms is >= 0 and <= 253402300799999:
                timestamp = DateTimeOffset.FromUnixTimeMilliseconds(ms);
                return true;
            default:
                return false;
        }
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
