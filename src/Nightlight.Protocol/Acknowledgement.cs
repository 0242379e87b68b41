using System.Text;
using System.Text.Json;

namespace Nightlight.Protocol;

/// <summary>
/// A device's answer to a tracked command, on <c>{id}/acks</c>: <c>{"id": "c123", "status": "acknowledged"}</c>.
/// A device that cannot apply a command says <c>"failed"</c>.
/// </summary>
/// <param name="CommandId">The <c>id</c> field of the command being answered.</param>
/// <param name="Status"><c>acknowledged</c> or <c>failed</c>.</param>
public sealed record Acknowledgement(string CommandId, string Status)
{
    /// <summary>Longest command id accepted, in characters.</summary>
    public const int MaxIdLength = 64;

    /// <summary>Parses an acknowledgement payload. Never throws for bad input; a missing status means acknowledged.</summary>
    public static bool TryParse(ReadOnlySpan<byte> payload, out Acknowledgement ack, out string error)
    {
        ack = null!;
        if (payload.Length == 0 || payload.Length > CommandMessage.MaxPayloadBytes)
        {
            error = payload.Length == 0 ? "empty payload" : $"payload of {payload.Length} bytes is over the limit";
            return false;
        }
        try
        {
            var reader = new Utf8JsonReader(payload, new JsonReaderOptions { MaxDepth = 4 });
            using var document = JsonDocument.ParseValue(ref reader);
            var root = document.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
            {
                error = "payload is not a JSON object";
                return false;
            }
            if (!root.TryGetProperty("id", out var id) || id.ValueKind is not (JsonValueKind.String or JsonValueKind.Number))
            {
                error = "\"id\" is missing or not a string";
                return false;
            }
            var idText = id.ValueKind == JsonValueKind.String ? id.GetString()! : id.GetRawText();
            if (idText.Length is 0 or > MaxIdLength)
            {
                error = "\"id\" is empty or too long";
                return false;
            }
            var status = "acknowledged";
            if (root.TryGetProperty("status", out var s))
            {
                status = s.ValueKind == JsonValueKind.String ? s.GetString()! : "";
                if (status is not ("acknowledged" or "failed"))
                {
                    error = "\"status\" is not \"acknowledged\" or \"failed\"";
                    return false;
                }
            }
            ack = new Acknowledgement(idText, status);
            error = "";
            return true;
        }
        catch (JsonException e)
        {
            error = $"payload is not JSON ({e.Message.Split(". ")[0]})";
            return false;
        }
    }

    /// <summary>A tracked command on the wire: the lesson payload plus the id a device echoes in its acknowledgement.</summary>
    public static byte[] WriteCommand(bool ledOn, string commandId) =>
        Encoding.UTF8.GetBytes($"{{\"led_on\": {(ledOn ? "true" : "false")}, \"id\": \"{commandId}\"}}");
}

/// <summary>A device's presence on its retained <c>{id}/status</c> topic: <c>{"online": true}</c>.</summary>
public static class Presence
{
    /// <summary>
    /// Reads the <c>online</c> field, tolerantly: any JSON object with a boolean <c>online</c>, or the bare words
    /// <c>online</c>/<c>offline</c>. An empty payload (a cleared retained message) means offline.
    /// </summary>
    public static bool TryParse(ReadOnlySpan<byte> payload, out bool online)
    {
        online = false;
        if (payload.IsEmpty)
        {
            return true;
        }
        var text = Encoding.UTF8.GetString(payload).Trim();
        if (text.Equals("online", StringComparison.OrdinalIgnoreCase) || text.Equals("offline", StringComparison.OrdinalIgnoreCase))
        {
            online = text.Equals("online", StringComparison.OrdinalIgnoreCase);
            return true;
        }
        try
        {
            using var document = JsonDocument.Parse(text, new JsonDocumentOptions { MaxDepth = 4 });
            if (document.RootElement.ValueKind == JsonValueKind.Object &&
                document.RootElement.TryGetProperty("online", out var value) && value.ValueKind is JsonValueKind.True or JsonValueKind.False)
            {
                online = value.GetBoolean();
                return true;
            }
        }
        catch (JsonException)
        {
        }
        return false;
    }
}
