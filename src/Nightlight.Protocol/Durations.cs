using System.Globalization;

namespace Nightlight.Protocol;

/// <summary>Parses human durations from flags and configuration: <c>200ms</c>, <c>5s</c>, <c>2m</c>, <c>1h</c>, <c>00:00:05</c>.</summary>
public static class Durations
{
    /// <summary>
    /// Parses <paramref name="text"/>. A bare number is refused: <c>--retention 30</c> meant days to whoever typed it and
    /// seconds to us, and deleted a month of readings.
    /// </summary>
    public static bool TryParse(string? text, out TimeSpan value)
    {
        value = default;
        if (string.IsNullOrWhiteSpace(text))
        {
            return false;
        }
        var s = text.Trim().ToLowerInvariant();
        if (s.Contains(':') && TimeSpan.TryParse(s, CultureInfo.InvariantCulture, out value))
        {
            return value > TimeSpan.Zero;
        }
        var (number, scale) = s switch
        {
            _ when s.EndsWith("ms", StringComparison.Ordinal) => (s[..^2], 1.0),
            _ when s.EndsWith('s') => (s[..^1], 1000.0),
            _ when s.EndsWith('m') => (s[..^1], 60_000.0),
            _ when s.EndsWith('h') => (s[..^1], 3_600_000.0),
            _ when s.EndsWith('d') => (s[..^1], 86_400_000.0),
            _ => (s, double.NaN),
        };
        if (!double.TryParse(number, NumberStyles.Float, CultureInfo.InvariantCulture, out var amount) || !double.IsFinite(amount) || double.IsNaN(scale) ||
            amount <= 0 || amount * scale > TimeSpan.MaxValue.TotalMilliseconds / 2)
        {
            return false;
        }
        value = TimeSpan.FromMilliseconds(amount * scale);
        return true;
    }

    /// <summary>True for <c>0</c> (spaces around it allowed): what a setting whose zero means "none" is given for none.</summary>
    public static bool IsZero(string? text) => text?.Trim() == "0";

    /// <summary>Parses or throws a <see cref="FormatException"/> naming <paramref name="setting"/>.</summary>
    public static TimeSpan Parse(string? text, string setting) =>
        TryParse(text, out var value) ? value : throw new FormatException($"{setting} '{text}' {Problem(text)}");

    /// <summary>What is wrong with <paramref name="text"/> as a duration, for an error line: "is not a duration; say ...".</summary>
    public static string Problem(string? text) =>
        double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out _)
            ? "has no unit; say 30d, 30h, 30m, 5s or 200ms"
            : "is not a duration; say 30d, 30h, 30m, 5s or 200ms";
}
