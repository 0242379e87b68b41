using System.Globalization;
using System.Text;

namespace Nightlight.Protocol;

/// <summary>
/// One reading from a device, parsed once at the edge. <see cref="Light"/> is the lesson's field; the other
/// measurements (for example <c>temperature</c>) are kept by name in <see cref="Measurements"/>.
/// </summary>
/// <param name="DeviceId">The device that sent it, from the topic.</param>
/// <param name="Light">Light level: 0–1,000,000 (raw 0–1023 ADC counts for the lesson's sensor, or lux); null for a
/// reading without light, such as a thermostat's.</param>
/// <param name="Measurements">Every numeric measurement by name, <c>light</c> included.</param>
/// <param name="Seq">Per-device sequence number, when the device sent one; increases across restarts.</param>
/// <param name="Timestamp">When the device took the reading, when it said so.</param>
public sealed record TelemetryMessage(
    string DeviceId,
    double? Light,
    Measurements Measurements,
    long? Seq = null,
    DateTimeOffset? Timestamp = null)
{
    /// <summary>
    /// The numbering <see cref="Seq"/> belongs to: 1 to <see cref="TelemetryParser.MaxEpoch"/>, chosen at random by a
    /// device each time its numbering starts again at 1; 0 when the device sent none (lesson devices, older SDKs).
    /// </summary>
    public long Epoch { get; init; }

    /// <summary>
    /// The measurements as the lesson's Python server prints them (<c>json.dumps</c> style):
    /// <c>{"light": 412}</c>. Sequence number and timestamp are left out: they are bookkeeping, not readings.
    /// </summary>
    public string ToLessonJson()
    {
        var text = new StringBuilder("{");
        var first = true;
        foreach (var (name, value) in Measurements)
        {
            if (!first)
            {
                text.Append(", ");
            }
            first = false;
            text.Append('"').Append(name).Append("\": ").Append(Wire.FormatNumber(value));
        }
        return text.Append('}').ToString();
    }
}

/// <summary>Number formatting shared by every payload writer.</summary>
public static class Wire
{
    /// <summary>Formats a number as JSON: integers without a decimal point, others round-trippable.</summary>
    public static string FormatNumber(double value) =>
        value == Math.Floor(value) && Math.Abs(value) < 1e15
            ? ((long)value).ToString(CultureInfo.InvariantCulture)
            : value.ToString("R", CultureInfo.InvariantCulture);
}
