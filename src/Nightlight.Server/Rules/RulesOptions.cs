namespace Nightlight.Server.Rules;

/// <summary>
/// Configuration section <c>Rules</c>. With nothing configured every device gets the lesson rule:
/// <c>led_on = light &lt; Server:Threshold</c>, answered for every reading. See docs/rules.example.json.
/// </summary>
public sealed class RulesOptions
{
    public const string Section = "Rules";

    /// <summary>The rule of every device without its own entry in <see cref="Devices"/> and outside any group.</summary>
    public RuleSettings Default { get; set; } = new();

    /// <summary>Per-device rules by device id.</summary>
    public Dictionary<string, RuleSettings> Devices { get; set; } = new(StringComparer.Ordinal);

    /// <summary>Group rules: sensors that decide together for a set of lights (the lesson's stadium).</summary>
    public List<GroupRuleSettings> Groups { get; set; } = [];
}

/// <summary>One switching rule: which measurement, where it switches, and when to answer.</summary>
public class RuleSettings
{
    /// <summary>The measurement the rule reads (default <c>light</c>). Readings without it are not answered.</summary>
    public string Measurement { get; set; } = "light";

    /// <summary>
    /// The switch the rule drives: <c>led_on</c> (default, the lesson's) or <c>heating_on</c> (the thermostat: on below
    /// <see cref="On"/> °C, off at or above <see cref="Off"/>).
    /// </summary>
    public string Switch { get; set; } = "led_on";

    /// <summary>The lesson's single threshold: on below it, off at or above it. Default <c>Server:Threshold</c>.</summary>
    public double? Threshold { get; set; }

    /// <summary>Hysteresis: the LED goes on below this value...</summary>
    public double? On { get; set; }

    /// <summary>...and off at or above this one (≥ <see cref="On"/>); in between it stays as it is.</summary>
    public double? Off { get; set; }

    /// <summary><c>every</c> (the lesson: a command for each reading) or <c>changes</c> (only when the LED should change).</summary>
    public string Answer { get; set; } = "every";
}

/// <summary>A group of sensors drives a group of lights.</summary>
public sealed class GroupRuleSettings : RuleSettings
{
    /// <summary>Name for logs and the API.</summary>
    public string Name { get; set; } = "";

    /// <summary>Device ids whose readings decide.</summary>
    public List<string> Sensors { get; set; } = [];

    /// <summary>Device ids that receive the commands.</summary>
    public List<string> Lights { get; set; } = [];

    /// <summary><c>median</c> of the fresh sensors' latest values, or <c>k-of-n</c>: on when at least <see cref="K"/> fresh sensors are dark.</summary>
    public string Decision { get; set; } = "median";

    /// <summary>For <c>k-of-n</c>: how many sensors must agree.</summary>
    public int K { get; set; } = 1;

    /// <summary>Sensors silent longer than this are left out of the decision (default 30s).</summary>
    public string MaxAge { get; set; } = "30s";
}
