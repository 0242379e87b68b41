using Nightlight.Protocol;
using Nightlight.Server.Rules;

namespace Nightlight.Tests;

/// <summary>The rules as configured in appsettings.json, fed readings the way the server's rule stage feeds them.</summary>
public class RuleTests
{
    static readonly DateTimeOffset T0 = new(2026, 11, 1, 20, 0, 0, TimeSpan.Zero);

    static TelemetryMessage Light(string device, double light) => new(device, light, new Dictionary<string, double> { ["light"] = light });

    static List<RuleDecision> Feed(RuleBook rules, string device, double light, int second = 0)
    {
        var decisions = new List<RuleDecision>();
        rules.Decide(Light(device, light), T0.AddSeconds(second), decisions);
        return decisions;
    }

    [Fact]
    public void Without_configuration_every_reading_gets_the_lesson_answer()
    {
        var rules = new RuleBook(new RulesOptions(), lessonThreshold: 300);

        Assert.Equal([new RuleDecision("n1", true, true)], Feed(rules, "n1", 299));
        Assert.Equal([new RuleDecision("n1", true, false)], Feed(rules, "n1", 250));
        Assert.Equal([new RuleDecision("n1", false, true)], Feed(rules, "n1", 300));
    }

    [Fact]
    public void Hysteresis_keeps_the_led_steady_between_on_and_off()
    {
        var rules = new RuleBook(new RulesOptions { Default = new RuleSettings { On = 300, Off = 320, Answer = "changes" } }, 300);

        var answers = new[] { 290, 305, 310, 299, 318, 321, 315, 305, 299 }.Select(v => Feed(rules, "n1", v)).ToList();

        // on at 290; the edge readings (305..318) change nothing; off at 321; on again only below 300.
        Assert.Equal([true, false, false, false, false, true, false, false, true], answers.Select(a => a.Count == 1));
        Assert.True(answers[0][0].LedOn);
        Assert.False(answers[5][0].LedOn);
        Assert.True(answers[8][0].LedOn);
    }

    [Fact]
    public void A_device_rule_overrides_the_default_and_readings_without_its_measurement_are_skipped()
    {
        var rules = new RuleBook(new RulesOptions
        {
            Devices = { ["thermo"] = new RuleSettings { Measurement = "temperature", Threshold = 18 } },
        }, 300);

        var cold = new List<RuleDecision>();
        rules.Decide(new TelemetryMessage("thermo", 0, new Dictionary<string, double> { ["temperature"] = 16.5 }), T0, cold);
        var noTemperature = new List<RuleDecision>();
        rules.Decide(Light("thermo", 100), T0, noTemperature);

        Assert.Equal([new RuleDecision("thermo", true, true)], cold);
        Assert.Empty(noTemperature);
        Assert.Equal([new RuleDecision("n1", false, true)], Feed(rules, "n1", 500));
    }

    static RulesOptions Stadium(string decision, int k = 1) => new()
    {
        Groups =
        {
            new GroupRuleSettings
            {
                Name = "stadium", Sensors = ["s1", "s2", "s3"], Lights = ["flood1", "flood2"], Decision = decision, K = k,
                Threshold = 300, MaxAge = "30s", Answer = "changes",
            },
        },
    };

    [Fact]
    public void A_cloud_over_one_sensor_does_not_switch_the_stadium_lights()
    {
        var rules = new RuleBook(Stadium("median"), 300);
        var first = Feed(rules, "s1", 800, 0);
        Feed(rules, "s2", 820, 1);
        Feed(rules, "s3", 790, 2);

        var cloud = Feed(rules, "s2", 50, 3);

        Assert.Equal([new RuleDecision("flood1", false, true), new RuleDecision("flood2", false, true)], first);
        Assert.Empty(cloud);
    }

    [Fact]
    public void Dusk_over_most_sensors_switches_every_light_of_the_group()
    {
        var rules = new RuleBook(Stadium("median"), 300);
        Feed(rules, "s1", 800, 0);
        Feed(rules, "s2", 800, 0);
        Feed(rules, "s3", 800, 0);

        Assert.Empty(Feed(rules, "s1", 100, 1));
        var dusk = Feed(rules, "s2", 120, 2);

        Assert.Equal(["flood1", "flood2"], dusk.Select(d => d.DeviceId));
        Assert.All(dusk, d => Assert.True(d.LedOn));
    }

    [Fact]
    public void A_silent_sensor_is_left_out_of_the_decision()
    {
        var rules = new RuleBook(Stadium("median"), 300);
        Feed(rules, "s1", 900, 0); // s1 then goes silent with a bright last reading
        Feed(rules, "s2", 800, 40);
        Feed(rules, "s3", 800, 40);

        // Without s1 the median of s2 and s3 decides: both dark means dark, whatever s1 said 45 seconds ago.
        Feed(rules, "s2", 100, 44);
        var dark = Feed(rules, "s3", 100, 45);

        Assert.Equal(2, dark.Count);
        Assert.All(dark, d => Assert.True(d.LedOn));
    }

    [Fact]
    public void K_of_n_switches_on_when_k_sensors_are_dark()
    {
        var rules = new RuleBook(Stadium("k-of-n", k: 2), 300);
        Feed(rules, "s1", 800, 0);
        Feed(rules, "s2", 800, 0);
        var bright = Feed(rules, "s3", 800, 0);

        var oneDark = Feed(rules, "s1", 100, 1);
        var twoDark = Feed(rules, "s2", 100, 2);

        Assert.All(bright, d => Assert.False(d.LedOn));
        Assert.Empty(oneDark);
        Assert.All(twoDark, d => Assert.True(d.LedOn));
        Assert.Equal(2, twoDark.Count);
    }

    [Theory]
    [InlineData("sometimes", "Answer")]
    [InlineData("every", "Off")]
    public void A_bad_rule_setting_fails_with_its_name(string answer, string named)
    {
        var options = new RulesOptions { Default = new RuleSettings { Answer = answer, On = answer == "every" ? 320 : null, Off = answer == "every" ? 300 : null } };

        var error = Assert.Throws<FormatException>(() => new RuleBook(options, 300));

        Assert.Contains("Rules:Default", error.Message);
        Assert.Contains(named, error.Message);
    }
}
