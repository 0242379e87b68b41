using System.Globalization;
using System.Text;
using System.Text.Json;

namespace Nightlight.Protocol;

/// <summary>
/// <c>{"epoch": E, "from": A, "seq": N}</c> on <c>{id}/stored</c>: every reading of epoch <paramref name="Epoch"/> from
/// <paramref name="From"/> to <paramref name="Seq"/> is committed in the store, so a device may forget it. Epoch 0 is
/// written without the field; without <c>from</c> the run starts at 0.
/// </summary>
/// <param name="Epoch">The device's numbering (0 to <see cref="TelemetryParser.MaxEpoch"/>).</param>
/// <param name="From">The lowest seq of the run of stored seqs without a gap that ends at <paramref name="Seq"/>.</param>
/// <param name="Seq">The highest committed <c>seq</c> of that run.</param>
public sealed record StoredAck(long Epoch, long From, long Seq)
{
    /// <summary>The payload as text.</summary>
    public override string ToString() =>
        (Epoch == 0 ? "{" : $"{{\"epoch\": {Epoch.ToString(CultureInfo.InvariantCulture)}, ") +
        $"\"from\": {From.ToString(CultureInfo.InvariantCulture)}, \"seq\": {Seq.ToString(CultureInfo.InvariantCulture)}}}";

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
            var from = 0L;
            if (root.TryGetProperty("from", out var fromElement) && (!fromElement.TryGetInt64(out from) || from < 0 || from > seq))
            {
                error = "\"from\" is not an integer from 0 to \"seq\"";
                return false;
            }
            ack = new StoredAck(epoch, from, seq);
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
