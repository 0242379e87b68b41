using System.Text;
using Nightlight.Protocol;
using Nightlight.Server.Rules;

namespace Nightlight.Tests;

/// <summary>The wire additions of the device SDK: readings without light, command semantics, acks and presence.</summary>
public class DeviceProtocolTests
{
    [Fact]
    public void A_thermostat_reading_without_light_parses_and_the_lesson_rule_skips_it()
    {
        Assert.True(TelemetryParser.TryParse("thermo1", "{\"temperature\": 18.5, \"seq\": 4, \"ts\": 1700000000000}"u8, out var reading, out var error), error);
        Assert.Null(reading.Light);
        Assert.Equal(18.5, reading.Measurements["temperature"]);
        Assert.Equal(4, reading.Seq);
        // The server's rules with nothing configured: the lesson's threshold on light, the same 300 as Server:Threshold.
        var rules = new RuleBook(new RulesOptions(), lessonThreshold: 300);
        var decisions = new List<RuleDecision>();
        rules.Decide(reading, DateTimeOffset.UtcNow, decisions);
        Assert.Empty(decisions);

        Assert.True(TelemetryParser.TryParse("n1", "{\"light\": 120, \"seq\": 9}"u8, out var light, out _));
        rules.Decide(light, DateTimeOffset.UtcNow, decisions);
        Assert.Equal([new RuleDecision("n1", LedOn: true, Changed: true)], decisions);
    }

    [Fact]
    public void Thermostat_telemetry_is_written_with_seq_and_ts()
    {
        var payload = Encoding.UTF8.GetString(TelemetryWriter.Write("temperature", 18.5, 7, DateTimeOffset.FromUnixTimeMilliseconds(1700000000123)));
        Assert.Equal("{\"temperature\": 18.5, \"seq\": 7, \"ts\": 1700000000123}", payload);
    }

    [Fact]
    public void An_ordered_command_round_trips_and_the_lesson_payload_stays_exact()
    {
        var command = new CommandMessage(true) { Id = "c-17", Seq = 17, Ordered = true };
        Assert.Equal("{\"led_on\": true, \"id\": \"c-17\", \"seq\": 17, \"ordered\": true}", command.ToString());
        Assert.True(CommandMessage.TryParse(command.ToPayload().Span, out var parsed, out var error), error);
        Assert.Equal(command, parsed);
        Assert.Equal("{\"led_on\": false}", Encoding.UTF8.GetString(new CommandMessage(false).ToPayload().Span));
    }

    [Fact]
    public void A_heating_command_parses_without_led_on()
    {
        Assert.True(CommandMessage.TryParse("{\"heating_on\": true}"u8, out var command, out var error), error);
        Assert.Null(command.LedOn);
        Assert.True(command.HeatingOn);
    }

    [Theory]
    [InlineData("{\"led_on\": true, \"ordered\": true, \"seq\": 3}", "needs \"id\"")]
    [InlineData("{\"led_on\": true, \"ordered\": true, \"id\": \"a\"}", "needs \"seq\"")]
    [InlineData("{\"led_on\": true, \"ordered\": \"yes\", \"id\": \"a\", \"seq\": 1}", "\"ordered\" is not true/false")]
    [InlineData("{\"led_on\": true, \"seq\": -1}", "\"seq\" is not a non-negative integer")]
    [InlineData("{\"heating_on\": 1}", "\"heating_on\" is not true/false")]
    [InlineData("{\"id\": \"a\"}", "\"led_on\" is missing")]
    public void Bad_commands_are_refused_with_a_reason(string payload, string reason)
    {
        Assert.False(CommandMessage.TryParse(Encoding.UTF8.GetBytes(payload), out _, out var error));
        Assert.Contains(reason, error);
    }

    [Fact]
    public void Acks_and_presence_have_one_wire_form()
    {
        var ack = new CommandAck("c-\"1", 5);
        Assert.Equal("{\"id\": \"c-\\u00221\", \"seq\": 5, \"status\": \"acknowledged\"}", ack.ToString());
        Assert.True(CommandAck.TryParse(ack.ToPayload(), out var parsed, out _));
        Assert.Equal(ack, parsed);
        Assert.False(CommandAck.TryParse("{\"status\": 1}"u8, out _, out _));

        Assert.Equal("{\"online\": true}", Encoding.UTF8.GetString(Presence.Online()));
        Assert.True(Presence.TryParse(Presence.Offline(), out var online));
        Assert.False(online);
        Assert.Equal("n1/status", Topics.Status("n1"));
        Assert.Equal("n1/acks", Topics.Acks("n1"));
        Assert.True(Topics.TryParseDeviceTopic("n1/acks", out var id, out var level));
        Assert.Equal("n1", id);
        Assert.Equal(Topics.AcksLevel, level);
    }

    [Fact]
    public void A_refusal_carries_its_reason_and_presence_its_switches()
    {
        var refused = new CommandAck("c-2", 7, CommandAck.Refused) { Reason = "no switch led_on" };
        Assert.Equal("{\"id\": \"c-2\", \"seq\": 7, \"status\": \"refused\", \"reason\": \"no switch led_on\"}", refused.ToString());
        Assert.True(CommandAck.TryParse(refused.ToPayload(), out var parsed, out _));
        Assert.Equal("no switch led_on", parsed.Reason);
        Assert.False(CommandAck.TryParse("{\"id\": \"c\", \"status\": \"refused\", \"reason\": 3}"u8, out _, out var error));
        Assert.Contains("reason", error);

        var presence = Presence.Online("cloud", [CommandMessage.Heating]);
        Assert.Equal("{\"online\": true, \"mode\": \"cloud\", \"switches\": [\"heating_on\"]}", Encoding.UTF8.GetString(presence));
        Assert.True(Presence.TryParse(presence, out var online, out var mode, out var switches));
        Assert.True(online);
        Assert.Equal("cloud", mode);
        Assert.Equal([CommandMessage.Heating], switches);
        // Unknown names and non-strings are left out; a presence without the field declares nothing.
        Assert.True(Presence.TryParse("{\"online\": true, \"switches\": [\"fan_on\", 3, \"led_on\"]}"u8, out _, out _, out switches));
        Assert.Equal([CommandMessage.Led], switches);
        Assert.True(Presence.TryParse(Presence.Online(), out _, out _, out switches));
        Assert.Null(switches);
        // The server's presence can never be read as a device's topic.
        Assert.False(Topics.TryParseDeviceTopic(Topics.ServerStatus, out _, out _));
    }
}
