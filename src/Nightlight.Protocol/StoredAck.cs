using System.Globalization;
using System.Text;
using System.Text.Json;

namespace Nightlight.Protocol;

/// <summary>
/// <c>{"epoch": E, "seq": N}</c> on <c>{id}/stored</c>: every reading of epoch <paramref name="Epoch"/> up to
/// <paramref name="Seq"/> that reached the store is committed, so a device may forget it. Epoch 0 is written without
/// the field.
/// </summary>
/// <param name="Epoch">The device's numbering (0 to <see cref="TelemetryParser.MaxEpoch"/>).</param>
/// <param name="Seq">The highest committed <c>seq</c> of that epoch.</param>
public sealed record StoredAck(long Epoch, long Seq)
{
    /// <summary>The payload as text.</summary>
    public override string ToString() => Epoch == 0
        ? $"{{\"seq\": {Seq.ToString(CultureInfo.InvariantCulture)}}}"
        : $"{{\"epoch\": {Epoch.ToString(CultureInfo.InvariantCulture)}, \"seq\": {Seq.ToString(CultureInfo.InvariantCulture)}}}";

    /// <summary>The payload bytes.</summary>
    public byte[] ToPayload() => Encoding.UTF8.GetBytes(ToString());

    /// <summary>Parses a stored acknowledgement. Never throws for bad input.</summary>
    public static bool TryParse(ReadOnlySpan<byte> payload, out StoredAck ack, out string error)
    {
        ack = null!;
        if (payload.Length == 0 || payload.Length > 256)
        {
            error = payload.Length == 0 ? "empty payload" : "payload is over 256 bytes";
            return false;
        }
        try
        {
            var reader = new Utf8JsonReader(payload, new JsonReaderOptions { MaxDepth = 1 });
            using var document = JsonDocument.ParseValue(ref reader);
            var root = document.RootElement;
            if (root.ValueKind != JsonValueKind.Object ||
                !root.TryGetProperty("seq", out var seqElement) || !seqElement.TryGetInt64(out var seq) || seq < 0)
            {
                error = "a stored acknowledgement needs a non-negative integer \"seq\"";
                return false;
            }
            var epoch = 0L;
            if (root.TryGetProperty("epoch", out var epochElement) &&
                (!epochElement.TryGetInt64(out epoch) || epoch < 0 || epoch > TelemetryParser.MaxEpoch))
            {
                error = "\"epoch\" is not an integer from 0 to 9007199254740991";
                return false;
            }
            ack = new StoredAck(epoch, seq);
            error = "";
            return true;
        }
        catch (JsonException e)
        {
            error = "not JSON: " + e.Message;
            return false;
        }
    }
}
