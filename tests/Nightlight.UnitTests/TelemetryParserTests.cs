using System.Text;
using Nightlight.Protocol;

namespace Nightlight.Tests;

public class TelemetryParserTests
{
    static (bool Ok, TelemetryMessage Message, string Error) Parse(string payload) => Parse(Encoding.UTF8.GetBytes(payload));

    static (bool Ok, TelemetryMessage Message, string Error) Parse(byte[] payload)
    {
        var ok = TelemetryParser.TryParse("dev1", payload, out var message, out var error);
        return (ok, message, error);
    }

    [Fact]
    public void The_lesson_payload_parses_to_its_light_level()
    {
        var (ok, message, _) = Parse("{\"light\": 412}");
        Assert.True(ok);
        Assert.Equal(412, message.Light);
        Assert.Equal("dev1", message.DeviceId);
        Assert.Equal("{\"light\": 412}", message.ToLessonJson());
    }

    [Fact]
    public void Extra_fields_are_additive_seq_and_ts_are_bookkeeping()
    {
        var (ok, message, _) = Parse("{\"light\": 12.5, \"temperature\": 18.5, \"seq\": 7, \"ts\": 1764100000000, \"note\": \"hi\"}");
        Assert.True(ok);
        Assert.Equal(12.5, message.Light);
        Assert.Equal(18.5, message.Measurements["temperature"]);
        Assert.Equal(7, message.Seq);
        Assert.Equal(DateTimeOffset.FromUnixTimeMilliseconds(1764100000000), message.Timestamp);
        Assert.Equal("{\"light\": 12.5, \"temperature\": 18.5}", message.ToLessonJson());
    }

    [Fact]
    public void An_epoch_goes_with_the_seq_and_a_reading_without_one_is_epoch_0()
    {
        var (ok, message, _) = Parse("{\"light\": 5, \"seq\": 7, \"epoch\": 9007199254740991}");
        Assert.True(ok);
        Assert.Equal(TelemetryParser.MaxEpoch, message.Epoch);
        Assert.Equal(0, Parse("{\"light\": 5, \"seq\": 7}").Message.Epoch);
        Assert.Equal(0, Parse("{\"light\": 5}").Message.Epoch);
        // What the device SDK writes, read back by the one parser.
        var written = Parse(TelemetryWriter.Write(120, 3, DateTimeOffset.FromUnixTimeMilliseconds(1764100000000), epoch: 4242));
        Assert.Equal((3L, 4242L), (written.Message.Seq!.Value, written.Message.Epoch));
        Assert.Equal("{\"light\": 120, \"seq\": 3, \"epoch\": 4242, \"ts\": 1764100000000}",
            Encoding.UTF8.GetString(TelemetryWriter.Write(120, 3, DateTimeOffset.FromUnixTimeMilliseconds(1764100000000), epoch: 4242)));
        Assert.DoesNotContain("epoch", Encoding.UTF8.GetString(TelemetryWriter.Write(120, 3, epoch: 0)));
    }

    [Fact]
    public void Nested_extra_fields_are_skipped_and_the_fields_after_them_still_read()
    {
        var (ok, message, _) = Parse("{\"note\": {\"a\": [1, {\"b\": 2}]}, \"tags\": [\"x\"], \"light\": 3, \"seq\": 9}");
        Assert.True(ok);
        Assert.Equal(3, message.Light);
        Assert.Equal(9, message.Seq);
        Assert.Equal(["light"], message.Measurements.Keys);
    }

    [Fact]
    public void Iso_timestamps_are_accepted()
    {
        var (ok, message, _) = Parse("{\"light\": 1, \"ts\": \"2026-11-25T10:00:00Z\"}");
        Assert.True(ok);
        Assert.Equal(new DateTimeOffset(2026, 11, 25, 10, 0, 0, TimeSpan.Zero), message.Timestamp);
    }

    [Theory]
    [InlineData("", "empty payload")]
    [InlineData("light=412", "not JSON")]
    [InlineData("{\"light\": 412", "not JSON")]
    [InlineData("[412]", "array, not an object")]
    [InlineData("412", "number, not an object")]
    [InlineData("{}", "\"light\" is missing")]
    [InlineData("{\"seq\": 3, \"ts\": 5}", "\"light\" is missing, and there is no other measurement")]
    [InlineData("{\"light\": \"412\"}", "\"light\" is a string, not a number")]
    [InlineData("{\"light\": null}", "\"light\" is a null, not a number")]
    [InlineData("{\"light\": true}", "\"light\" is a true, not a number")]
    [InlineData("{\"light\": -1}", "\"light\" is negative")]
    [InlineData("{\"light\": 1e300}", "above the plausible maximum")]
    [InlineData("{\"light\": 1e400}", "not a finite number")]
    [InlineData("{\"light\": NaN}", "not JSON")]
    [InlineData("{\"light\": 5, \"light\": 6}", "appears twice")]
    [InlineData("{\"light\": 5, \"seq\": -3}", "\"seq\" is not a non-negative integer")]
    [InlineData("{\"light\": 5, \"ts\": \"yesterday\"}", "\"ts\" is neither")]
    [InlineData("{\"light\": 5, \"seq\": 1, \"epoch\": -1}", "\"epoch\" is not an integer from 0 to 9007199254740991")]
    [InlineData("{\"light\": 5, \"seq\": 1, \"epoch\": 9007199254740992}", "\"epoch\" is not an integer")]
    [InlineData("{\"light\": 5, \"seq\": 1, \"epoch\": 1.5}", "\"epoch\" is not an integer")]
    [InlineData("{\"light\": 5, \"seq\": 1, \"epoch\": \"7\"}", "\"epoch\" is not an integer")]
    [InlineData("{\"light\": 5, \"epoch\": 7}", "\"epoch\" without \"seq\"")]
    [InlineData("{\"light\": 5, \"x\": {\"a\": {\"b\": {\"c\": {\"d\": 1}}}}}", "nested deeper than 4 levels")]
    [InlineData("{\"light\": 5} {\"light\": 6}", "not JSON")]
    [InlineData("{\"light\": \"412\", ", "not JSON")]
    [InlineData("{\"light\": 5, \"li\\u0067ht\": 6}", "appears twice")]
    [InlineData("{\"note\": \"a\", \"note\": [1]}", "appears twice")]
    public void Bad_payloads_are_rejected_with_a_reason(string payload, string reason)
    {
        var (ok, _, error) = Parse(payload);
        Assert.False(ok);
        Assert.Contains(reason, error);
    }

    [Fact]
    public void A_huge_payload_is_rejected_before_parsing()
    {
        var payload = "{\"light\": 1, \"pad\": \"" + new string('x', TelemetryParser.MaxPayloadBytes) + "\"}";
        var (ok, _, error) = Parse(payload);
        Assert.False(ok);
        Assert.Contains("over the 8192-byte limit", error);
    }

    [Fact]
    public void Invalid_utf8_is_rejected()
    {
        var (ok, _, error) = Parse([(byte)'{', 0xC3, 0x28, (byte)'}']);
        Assert.False(ok);
        Assert.Equal("payload is not valid UTF-8", error);
    }

    // The server reads the level and refuses one it does not read; a topic that fails here is rejected before that.
    [Theory]
    [InlineData("dev1/telemetry", true, "dev1", Topics.TelemetryLevel)]
    [InlineData("dev1/acks", true, "dev1", Topics.AcksLevel)]
    [InlineData("dev1/commands", true, "dev1", Topics.CommandsLevel)]
    [InlineData("/telemetry", false, "", "")]
    [InlineData("a/b/telemetry", false, "", "")]
    [InlineData("dev 1/telemetry", false, "", "")]
    [InlineData("$SYS/telemetry", false, "", "")]
    public void Device_topics_name_one_device_and_one_level(string topic, bool ok, string id, string expectedLevel)
    {
        Assert.Equal(ok, Topics.TryParseDeviceTopic(topic, out var deviceId, out var level));
        Assert.Equal(id, deviceId);
        Assert.Equal(expectedLevel, level);
    }

    [Fact]
    public void Commands_are_written_exactly_as_the_lesson_server_writes_them()
    {
        Assert.Equal("{\"led_on\": true}", Encoding.UTF8.GetString(new CommandMessage(true).ToPayload().Span));
        Assert.Equal("{\"led_on\": false}", Encoding.UTF8.GetString(new CommandMessage(false).ToPayload().Span));
        Assert.True(CommandMessage.TryParse("{\"led_on\": true, \"id\": 3}"u8, out var command, out _));
        Assert.True(command.LedOn);
        Assert.False(CommandMessage.TryParse("{\"led_on\": 1}"u8, out _, out var error));
        Assert.Contains("led_on", error);
    }

    [Fact]
    public void The_lesson_commands_parse_as_the_lesson_sent_them_and_others_still_through_json()
    {
        Assert.True(CommandMessage.TryParse("{\"led_on\": false}"u8, out var off, out _));
        Assert.Equal(new CommandMessage(false), off);
        Assert.True(CommandMessage.TryParse("{\"led_on\": true}"u8, out var on, out _));
        Assert.Equal(new CommandMessage(true), on);
        // The same command written another way, and one that carries more, go through the full reader.
        Assert.True(CommandMessage.TryParse("{\"led_on\":true}"u8, out var compact, out _));
        Assert.Equal(new CommandMessage(true), compact);
        Assert.True(CommandMessage.TryParse("{\"led_on\": true, \"id\": \"c-1\", \"seq\": 4, \"ordered\": true}"u8, out var ordered, out _));
        Assert.Equal(new CommandMessage(true) { Id = "c-1", Seq = 4, Ordered = true }, ordered);
    }

    [Fact]
    public void Many_measurements_keep_their_names_values_and_order()
    {
        var (ok, message, _) = Parse("{\"light\": 5, \"seq\": 1, \"a\": 1.5, \"b\": -2, \"c\": 3, \"d\": 4, \"e\": 5, \"f\": 6}");
        Assert.True(ok);
        string[] names = ["light", "a", "b", "c", "d", "e", "f"];
        double[] values = [5, 1.5, -2, 3, 4, 5, 6];
        Assert.Equal(names, message.Measurements.Select(m => m.Key));
        Assert.Equal(values, message.Measurements.Select(m => m.Value));
        Assert.Equal(names, message.Measurements.Keys);
        Assert.Equal(7, message.Measurements.Count);
        Assert.True(message.Measurements.TryGetValue("f", out var f));
        Assert.Equal(6, f);
        Assert.Equal(-2, message.Measurements["b"]);
        Assert.False(message.Measurements.ContainsKey("seq"));
        Assert.Throws<KeyNotFoundException>(() => message.Measurements["g"]);
        Assert.Equal("{\"light\": 5, \"a\": 1.5, \"b\": -2, \"c\": 3, \"d\": 4, \"e\": 5, \"f\": 6}", message.ToLessonJson());
        Assert.Equal("{\"light\":5,\"a\":1.5,\"b\":-2,\"c\":3,\"d\":4,\"e\":5,\"f\":6}", System.Text.Json.JsonSerializer.Serialize(message.Measurements));
    }

    [Fact]
    public void A_devices_id_is_the_same_string_in_every_message_it_sends()
    {
        Assert.True(Topics.TryParseDeviceTopic("interned-1/telemetry", out var first, out _));
        Assert.True(Topics.TryParseDeviceTopic("interned-1/acks", out var second, out var level));
        Assert.Equal("interned-1", first);
        Assert.Same(first, second);
        Assert.Equal(Topics.AcksLevel, level);
        Assert.False(Topics.TryDeviceId("bad id", out _));
        Assert.False(Topics.TryDeviceId("", out _));
    }

    [Theory]
    [InlineData("200ms", 200)]
    [InlineData("2s", 2000)]
    [InlineData("1.5m", 90000)]
    [InlineData("00:00:03", 3000)]
    public void Durations_accept_what_people_type(string text, double ms)
    {
        Assert.True(Durations.TryParse(text, out var value));
        Assert.Equal(ms, value.TotalMilliseconds);
    }

    [Theory]
    [InlineData("")]
    [InlineData("fast")]
    [InlineData("-2s")]
    [InlineData("0")]
    // A bare number once meant seconds: `server --retention 30` deleted everything older than 30 seconds.
    [InlineData("30")]
    [InlineData("1.5")]
    public void Bad_durations_are_refused(string text) => Assert.False(Durations.TryParse(text, out _));
}
