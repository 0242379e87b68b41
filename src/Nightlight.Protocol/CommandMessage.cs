using System.Globalization;
using System.Text;
using System.Text.Json;

namespace Nightlight.Protocol;

/// <summary>
/// A command on <c>{id}/commands</c>. The lesson's payload is <c>{"led_on": true}</c>; every other field is optional
/// and ignored by lesson devices. The whole wire format, in one place:
/// <list type="bullet">
/// <item><c>led_on</c> (true/false): the nightlight's LED. <c>heating_on</c> (true/false): the thermostat's heater.
/// A command carries at least one of them.</item>
/// <item><c>seq</c> (integer ≥ 0) and <c>ts</c> (Unix milliseconds, or ISO 8601): a state command (latest-wins) with
/// either is ignored when it is older than the last one the device applied.</item>
/// <item><c>"ordered": true</c> with <c>id</c> (string, 1–64 characters) and <c>seq</c> (the sender's per-device
/// sequence): an ordered command, applied at most once and never after a later one, and acknowledged on
/// <c>{id}/acks</c> with a <see cref="CommandAck"/>.</item>
/// </list>
/// Example of an ordered command: <c>{"led_on": true, "id": "c-17", "seq": 17, "ordered": true}</c>.
/// </summary>
/// <param name="LedOn">True to switch the LED on, false off, null to leave it alone.</param>
/// <param name="HeatingOn">True to switch the heater on, false off, null to leave it alone.</param>
public sealed record CommandMessage(bool? LedOn, bool? HeatingOn = null)
{
    /// <summary>The nightlight's switch, the lesson's <c>led_on</c>.</summary>
    public const string Led = "led_on";

    /// <summary>The thermostat's switch, <c>heating_on</c>.</summary>
    public const string Heating = "heating_on";

    /// <summary>Every switch a command can carry.</summary>
    public static readonly IReadOnlyList<string> KnownSwitches = [Led, Heating];

    /// <summary>True when <paramref name="name"/> is one of <see cref="KnownSwitches"/>.</summary>
    public static bool IsSwitch(string? name) => name is Led or Heating;

    /// <summary>A command that sets one switch: the lesson's exact payload for <c>led_on</c>.</summary>
    public static CommandMessage ForSwitch(string name, bool on) => name == Heating ? new CommandMessage(null, on) : Lesson(on);

    /// <summary>The switches this command sets, by name.</summary>
    public IEnumerable<(string Name, bool On)> Switches()
    {
        if (LedOn is { } led)
        {
            yield return (Led, led);
        }
        if (HeatingOn is { } heating)
        {
            yield return (Heating, heating);
        }
    }

    /// <summary>Largest command payload a device accepts, in bytes.</summary>
    public const int MaxPayloadBytes = 8 * 1024;

    /// <summary>Longest ordered-command id, in characters.</summary>
    public const int MaxIdLength = 64;

    static readonly byte[] On = Encoding.UTF8.GetBytes("{\"led_on\": true}");
    static readonly byte[] Off = Encoding.UTF8.GetBytes("{\"led_on\": false}");

    static readonly CommandMessage LessonOn = new(true);
    static readonly CommandMessage LessonOff = new(false);

    /// <summary>The lesson's command, <c>{"led_on": true}</c> or <c>{"led_on": false}</c>, one shared instance of each.</summary>
    public static CommandMessage Lesson(bool ledOn) => ledOn ? LessonOn : LessonOff;

    /// <summary>The sender's sequence number: per device, increasing. Required when <see cref="Ordered"/>.</summary>
    public long? Seq { get; init; }

    /// <summary>When the sender decided this command (Unix milliseconds on the wire).</summary>
    public DateTimeOffset? Timestamp { get; init; }

    /// <summary>The command's id, echoed in its acknowledgement. Required when <see cref="Ordered"/>.</summary>
    public string? Id { get; init; }

    /// <summary>True for an ordered command (applied once, in order, acknowledged); false for a state command.</summary>
    public bool Ordered { get; init; }

    /// <summary>True for the lesson's exact payload: an LED command with nothing else.</summary>
    bool IsLessonPayload => LedOn is not null && HeatingOn is null && Seq is null && Timestamp is null && Id is null && !Ordered;

    /// <summary>The payload: exactly the lesson's <c>{"led_on": true}</c> for a plain LED command.</summary>
    public ReadOnlyMemory<byte> ToPayload() => IsLessonPayload ? (LedOn == true ? On : Off) : Encoding.UTF8.GetBytes(ToString());

    /// <summary>The payload as text, for lesson-style log lines.</summary>
    public override string ToString()
    {
        if (IsLessonPayload)
        {
            return LedOn == true ? "{\"led_on\": true}" : "{\"led_on\": false}";
        }
        var fields = new List<string>(6);
        if (LedOn is { } led)
        {
            fields.Add($"\"led_on\": {(led ? "true" : "false")}");
        }
        if (HeatingOn is { } heating)
        {
            fields.Add($"\"heating_on\": {(heating ? "true" : "false")}");
        }
        if (Id is { } id)
        {
            fields.Add($"\"id\": \"{JsonEncodedText.Encode(id)}\"");
        }
        if (Seq is { } seq)
        {
            fields.Add($"\"seq\": {seq.ToString(CultureInfo.InvariantCulture)}");
        }
        if (Timestamp is { } ts)
        {
            fields.Add($"\"ts\": {ts.ToUnixTimeMilliseconds().ToString(CultureInfo.InvariantCulture)}");
        }
        if (Ordered)
        {
            fields.Add("\"ordered\": true");
        }
        return "{" + string.Join(", ", fields) + "}";
    }

    /// <summary>Parses a command payload. Never throws for bad input.</summary>
    public static bool TryParse(ReadOnlySpan<byte> payload, out CommandMessage command, out string error)
    {
        command = null!;
        if (payload.Length == 0 || payload.Length > MaxPayloadBytes)
        {
            error = payload.Length == 0 ? "empty payload" : $"payload of {payload.Length} bytes is over the limit";
            return false;
        }
        var on = payload.SequenceEqual(On);
        if (on || payload.SequenceEqual(Off))
        {
            // The lesson's two commands, most of what passes, need no JSON document.
            command = Lesson(on);
            error = "";
            return true;
        }
        try
        {
            var reader = new Utf8JsonReader(payload, new JsonReaderOptions { MaxDepth = 4 });
            using var document = JsonDocument.ParseValue(ref reader);
            return TryRead(document.RootElement, out command, out error);
        }
        catch (JsonException e)
        {
            error = $"payload is not JSON ({e.Message.Split(". ")[0]})";
            return false;
        }
    }

    static bool TryRead(JsonElement root, out CommandMessage command, out string error)
    {
        command = null!;
        if (root.ValueKind != JsonValueKind.Object)
        {
            error = "payload is not a JSON object";
            return false;
        }
        if (!TryReadSwitch(root, "led_on", out var led, out error) || !TryReadSwitch(root, "heating_on", out var heating, out error))
        {
            return false;
        }
        if (led is null && heating is null)
        {
            error = "\"led_on\" is missing or not true/false (and there is no \"heating_on\")";
            return false;
        }
        long? seq = null;
        if (root.TryGetProperty("seq", out var seqElement))
        {
            if (seqElement.ValueKind != JsonValueKind.Number || !seqElement.TryGetInt64(out var s) || s < 0)
            {
                error = "\"seq\" is not a non-negative integer";
                return false;
            }
            seq = s;
        }
        DateTimeOffset? timestamp = null;
        if (root.TryGetProperty("ts", out var tsElement))
        {
            if (!TelemetryParser.TryReadTimestamp(tsElement, out var ts))
            {
                error = "\"ts\" is neither an ISO 8601 time nor Unix milliseconds";
                return false;
            }
            timestamp = ts;
        }
        var ordered = false;
        if (root.TryGetProperty("ordered", out var orderedElement))
        {
            if (orderedElement.ValueKind is not (JsonValueKind.True or JsonValueKind.False))
            {
                error = "\"ordered\" is not true/false";
                return false;
            }
            ordered = orderedElement.GetBoolean();
        }
        // The lesson's servers may add a numeric id of their own; only an ordered command's id must be a string.
        string? id = root.TryGetProperty("id", out var idElement) && idElement.ValueKind == JsonValueKind.String ? idElement.GetString() : null;
        if (ordered)
        {
            if (id is null || id.Length is 0 or > MaxIdLength || id.Any(char.IsControl))
            {
                error = $"an ordered command needs \"id\": a string of 1–{MaxIdLength} printable characters";
                return false;
            }
            if (seq is null)
            {
                error = "an ordered command needs \"seq\"";
                return false;
            }
        }
        command = new CommandMessage(led, heating) { Seq = seq, Timestamp = timestamp, Id = id, Ordered = ordered };
        error = "";
        return true;
    }

    static bool TryReadSwitch(JsonElement root, string name, out bool? value, out string error)
    {
        value = null;
        error = "";
        if (!root.TryGetProperty(name, out var element))
        {
            return true;
        }
        if (element.ValueKind is not (JsonValueKind.True or JsonValueKind.False))
        {
            error = $"\"{name}\" is not true/false";
            return false;
        }
        value = element.GetBoolean();
        return true;
    }
}

/// <summary>
/// A device's answer to an ordered command, on <c>{id}/acks</c>:
/// <c>{"id": "c-17", "seq": 17, "status": "acknowledged"}</c>. A duplicate is acknowledged again (not applied again),
/// so a sender whose first acknowledgement was lost stops retrying.
/// </summary>
/// <param name="Id">The command's id.</param>
/// <param name="Seq">The command's sequence number.</param>
/// <param name="Status"><see cref="Acknowledged"/> (applied) or <see cref="Refused"/> (not applied, see <see cref="Reason"/>); a
/// receiver treats any other value as "not applied".</param>
public sealed record CommandAck(string Id, long Seq, string Status = CommandAck.Acknowledged)
{
    /// <summary>The status of an applied (or already applied) command.</summary>
    public const string Acknowledged = "acknowledged";

    /// <summary>The status of a command the device cannot apply (a switch it does not have): <c>{"status": "refused", "reason": "..."}</c>.</summary>
    public const string Refused = "refused";

    /// <summary>Why the device did not apply it (with <see cref="Refused"/>), at most 200 characters; null otherwise.</summary>
    public string? Reason { get; init; }

    /// <summary>The payload as text.</summary>
    public override string ToString() =>
        $"{{\"id\": \"{JsonEncodedText.Encode(Id)}\", \"seq\": {Seq.ToString(CultureInfo.InvariantCulture)}, \"status\": \"{JsonEncodedText.Encode(Status)}\"" +
        (Reason is { } reason ? $", \"reason\": \"{JsonEncodedText.Encode(reason)}\"}}" : "}");

    /// <summary>The payload bytes.</summary>
    public byte[] ToPayload() => Encoding.UTF8.GetBytes(ToString());

    /// <summary>Parses an acknowledgement. Never throws for bad input.</summary>
    public static bool TryParse(ReadOnlySpan<byte> payload, out CommandAck ack, out string error)
    {
        ack = null!;
        if (payload.Length == 0 || payload.Length > 1024)
        {
            error = payload.Length == 0 ? "empty payload" : "payload is over 1024 bytes";
            return false;
        }
        try
        {
            var reader = new Utf8JsonReader(payload, new JsonReaderOptions { MaxDepth = 2 });
            using var document = JsonDocument.ParseValue(ref reader);
            var root = document.RootElement;
            if (root.ValueKind != JsonValueKind.Object ||
                !root.TryGetProperty("id", out var id) || id.ValueKind != JsonValueKind.String ||
                !root.TryGetProperty("status", out var status) || status.ValueKind != JsonValueKind.String)
            {
                error = "an acknowledgement needs \"id\" and \"status\" strings";
                return false;
            }
            long seq = -1;
            if (root.TryGetProperty("seq", out var seqElement) && (!seqElement.TryGetInt64(out seq) || seq < 0))
            {
                error = "\"seq\" is not a non-negative integer";
                return false;
            }
            string? reason = null;
            if (root.TryGetProperty("reason", out var reasonElement))
            {
                if (reasonElement.ValueKind != JsonValueKind.String || reasonElement.GetString()!.Length > 200)
                {
                    error = "\"reason\" is not a string of at most 200 characters";
                    return false;
                }
                reason = reasonElement.GetString();
            }
            ack = new CommandAck(id.GetString()!, seq, status.GetString()!) { Reason = reason };
            error = "";
            return true;
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException)
        {
            error = $"payload is not a JSON acknowledgement ({e.Message.Split(". ")[0]})";
            return false;
        }
    }
}

/// <summary>
/// The retained presence payloads on <c>{id}/status</c>: <c>{"online": true}</c> while connected,
/// <c>{"online": false}</c> after a clean stop or, through the last will, after the device vanished.
/// </summary>
public static class Presence
{
    /// <summary><c>{"online": true}</c></summary>
    public static byte[] Online() => Encoding.UTF8.GetBytes("{\"online\": true}");

    /// <summary><c>{"online": false}</c></summary>
    public static byte[] Offline() => Encoding.UTF8.GetBytes("{\"online\": false}");

    /// <summary>
    /// <c>{"online": true, "mode": "cloud"}</c>: online, and who decides what the device does, <c>cloud</c> (the server's
    /// commands) or <c>local</c> (the device's own fallback rule). Receivers that only know <c>online</c> ignore it.
    /// </summary>
    public static byte[] Online(string mode) => Encoding.UTF8.GetBytes($"{{\"online\": true, \"mode\": \"{mode}\"}}");

    /// <summary>
    /// <c>{"online": true, "mode": "cloud", "switches": ["heating_on"]}</c>: <see cref="Online(string)"/> (mode left out
    /// when null) plus the switches the device has, so a server offers only those. Receivers that do not know
    /// <c>switches</c> ignore it.
    /// </summary>
    public static byte[] Online(string? mode, IReadOnlyCollection<string> switches)
    {
        var text = new StringBuilder("{\"online\": true");
        if (mode is not null)
        {
            text.Append(", \"mode\": \"").Append(mode).Append('"');
        }
        text.Append(", \"switches\": [").Append(string.Join(", ", switches.Select(s => $"\"{JsonEncodedText.Encode(s)}\""))).Append("]}");
        return Encoding.UTF8.GetBytes(text.ToString());
    }

    /// <summary>Reads the <c>online</c> flag of a presence payload. Never throws for bad input.</summary>
    public static bool TryParse(ReadOnlySpan<byte> payload, out bool online) => TryParse(payload, out online, out _);

    /// <summary>
    /// Reads the <c>online</c> flag and the optional <c>mode</c> (<c>cloud</c> or <c>local</c>; null when absent or
    /// anything else) of a presence payload. Never throws for bad input.
    /// </summary>
    public static bool TryParse(ReadOnlySpan<byte> payload, out bool online, out string? mode) => TryParse(payload, out online, out mode, out _);

    /// <summary>
    /// <see cref="TryParse(ReadOnlySpan{byte}, out bool, out string?)"/>, and the switches the device declares (known
    /// names only, see <see cref="CommandMessage.KnownSwitches"/>; null when it does not say). Never throws for bad input.
    /// </summary>
    public static bool TryParse(ReadOnlySpan<byte> payload, out bool online, out string? mode, out IReadOnlyList<string>? switches)
    {
        online = false;
        mode = null;
        switches = null;
        try
        {
            var reader = new Utf8JsonReader(payload, new JsonReaderOptions { MaxDepth = 2 });
            using var document = JsonDocument.ParseValue(ref reader);
            if (document.RootElement.ValueKind == JsonValueKind.Object && document.RootElement.TryGetProperty("online", out var value) &&
                value.ValueKind is JsonValueKind.True or JsonValueKind.False)
            {
                online = value.GetBoolean();
                if (document.RootElement.TryGetProperty("mode", out var said) && said.ValueKind == JsonValueKind.String &&
                    said.GetString() is "cloud" or "local")
                {
                    mode = said.GetString();
                }
                if (document.RootElement.TryGetProperty("switches", out var declared) && declared.ValueKind == JsonValueKind.Array)
                {
                    switches = [.. declared.EnumerateArray().Where(e => e.ValueKind == JsonValueKind.String).Select(e => e.GetString())
                        .Where(CommandMessage.IsSwitch).Distinct().Select(n => n!)];
                }
                return true;
            }
            return false;
        }
        catch (JsonException)
        {
            return false;
        }
    }
}

/// <summary>Writes telemetry payloads the way the lesson's device does: <c>{"light": 412}</c>.</summary>
public static class TelemetryWriter
{
    /// <summary>Lesson payload, plus <c>seq</c>, <c>epoch</c> (when not 0) and <c>ts</c> (Unix milliseconds) when given.</summary>
    public static byte[] Write(double light, long? seq = null, DateTimeOffset? timestamp = null, long epoch = 0) => Write("light", light, seq, timestamp, epoch);

    /// <summary>One measurement by name (<c>{"temperature": 18.5, "seq": 7, "epoch": 4242, "ts": 1700000000000}</c>).</summary>
    /// <remarks>Epoch 0 is left out: a reading with a seq and no epoch is epoch 0.</remarks>
    public static byte[] Write(string measurement, double value, long? seq = null, DateTimeOffset? timestamp = null, long epoch = 0)
    {
        var text = new StringBuilder("{\"").Append(measurement).Append("\": ").Append(Wire.FormatNumber(value));
        if (seq is { } s)
        {
            text.Append(", \"seq\": ").Append(s);
            if (epoch != 0)
            {
                text.Append(", \"epoch\": ").Append(epoch);
            }
        }
        if (timestamp is { } ts)
        {
            text.Append(", \"ts\": ").Append(ts.ToUnixTimeMilliseconds());
        }
        return Encoding.UTF8.GetBytes(text.Append('}').ToString());
    }
}
