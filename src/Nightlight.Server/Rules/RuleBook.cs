using Microsoft.Extensions.Options;
using Nightlight.Protocol;

namespace Nightlight.Server.Rules;

/// <summary>
/// A decision for one switch of one device (<see cref="Switch"/>, the lesson's <c>led_on</c> by default): on or off.
/// <see cref="Changed"/> says the rule's state moved.
/// </summary>
public readonly record struct RuleDecision(string DeviceId, bool LedOn, bool Changed, string Switch = CommandMessage.Led);

/// <summary>On below <c>on</c>, off at or above <c>off</c>, unchanged in between: the LED does not flicker at the edge.</summary>
public readonly record struct Hysteresis(double On, double Off)
{
    public static Hysteresis From(RuleSettings settings, double defaultThreshold)
    {
        var threshold = settings.Threshold ?? defaultThreshold;
        var on = settings.On ?? settings.Off ?? threshold;
        var off = settings.Off ?? Math.Max(on, settings.On ?? threshold);
        return new Hysteresis(on, off);
    }

    /// <summary>The new state for <paramref name="value"/> given the current one; null when undecided (in between, no state yet).</summary>
    public bool? Next(double value, bool? current) => value < On ? true : value >= Off ? false : current;
}

/// <summary>
/// Every rule of the server, built from <see cref="RulesOptions"/>. Not thread-safe: the server's single rule stage
/// calls it, in reading order.
/// </summary>
public sealed class RuleBook
{
    readonly DeviceRule _default;
    readonly Dictionary<string, DeviceRule> _perDevice = new(StringComparer.Ordinal);
    readonly Dictionary<string, DeviceRule> _custom = new(StringComparer.Ordinal);
    readonly Dictionary<string, List<GroupRule>> _groupsBySensor = new(StringComparer.Ordinal);
    readonly RuleSettings _defaultSettings;
    readonly double _threshold;

    public RuleBook(RulesOptions options, double lessonThreshold)
    {
        _threshold = lessonThreshold;
        _defaultSettings = options.Default;
        _default = new DeviceRule(options.Default, lessonThreshold);
        foreach (var (id, settings) in options.Devices)
        {
            Validate(settings, $"Rules:Devices:{id}");
            _custom[id] = new DeviceRule(settings, lessonThreshold);
        }
        Validate(options.Default, "Rules:Default");
        for (var i = 0; i < options.Groups.Count; i++)
        {
            var settings = options.Groups[i];
            var name = string.IsNullOrEmpty(settings.Name) ? $"Rules:Groups:{i}" : settings.Name;
            Validate(settings, $"Rules:Groups:{i}");
            if (settings.Sensors.Count == 0 || settings.Lights.Count == 0)
            {
                throw new FormatException($"Rules:Groups:{i} ({name}): needs at least one sensor and one light");
            }
            if (settings.Decision is not ("median" or "k-of-n"))
            {
                throw new FormatException($"Rules:Groups:{i}:Decision: '{settings.Decision}' is not median or k-of-n");
            }
            if (settings.Decision == "k-of-n" && (settings.K < 1 || settings.K > settings.Sensors.Count))
            {
                throw new FormatException($"Rules:Groups:{i}:K: {settings.K} must be between 1 and the number of sensors ({settings.Sensors.Count})");
            }
            var group = new GroupRule(name, settings, lessonThreshold, Durations.Parse(settings.MaxAge, $"Rules:Groups:{i}:MaxAge"));
            Groups.Add(group);
            foreach (var sensor in settings.Sensors)
            {
                if (!_groupsBySensor.TryGetValue(sensor, out var list))
                {
                    _groupsBySensor[sensor] = list = [];
                }
                list.Add(group);
            }
        }
    }

    public List<GroupRule> Groups { get; } = [];

    /// <summary>Devices whose readings feed a group rule.</summary>
    public IEnumerable<string> GroupSensors => _groupsBySensor.Keys;

    static void Validate(RuleSettings settings, string path)
    {
        if (settings.Answer is not ("every" or "changes"))
        {
            throw new FormatException($"{path}:Answer: '{settings.Answer}' is not every or changes");
        }
        if (!CommandMessage.IsSwitch(settings.Switch))
        {
            throw new FormatException($"{path}:Switch: '{settings.Switch}' is not one of {string.Join(", ", CommandMessage.KnownSwitches)}");
        }
        if (settings.On is { } on && settings.Off is { } off && off < on)
        {
            throw new FormatException($"{path}: Off ({off}) must be at or above On ({on})");
        }
    }

    /// <summary>
    /// The commands a reading calls for. A group sensor's reading updates its groups (and is answered by their
    /// decision for the lights); any other device is answered by its own rule.
    /// </summary>
    /// <param name="reading">The reading, parsed once at the edge.</param>
    /// <param name="arrived">When the server received it: group rules measure sensor silence by this clock.</param>
    /// <param name="decisions">Receives the commands; the caller clears it.</param>
    /// <param name="groups">False to leave group rules out (their sensors' readings arrive by another path).</param>
    /// <param name="devices">False to leave per-device rules out.</param>
    public void Decide(TelemetryMessage reading, DateTimeOffset arrived, List<RuleDecision> decisions, bool groups = true, bool devices = true)
    {
        if (_groupsBySensor.TryGetValue(reading.DeviceId, out var sensorGroups))
        {
            if (groups)
            {
                foreach (var group in sensorGroups)
                {
                    group.Decide(reading, arrived, decisions);
                }
            }
            return;
        }
        if (!devices)
        {
            return;
        }
        if (!_perDevice.TryGetValue(reading.DeviceId, out var rule))
        {
            rule = _custom.TryGetValue(reading.DeviceId, out var custom) ? custom.Fresh() : _default.Fresh();
            _perDevice[reading.DeviceId] = rule;
        }
        rule.Decide(reading, decisions);
    }

    /// <summary>True when the device's readings go to a group rule rather than its own rule.</summary>
    public bool IsGroupSensor(string deviceId) => _groupsBySensor.ContainsKey(deviceId);

    /// <summary>The default rule, described for the start-up line.</summary>
    public string DescribeDefault()
    {
        var h = Hysteresis.From(_defaultSettings, _threshold);
        var where = h.On == h.Off ? $"LED on below {h.On}" : $"LED on below {h.On}, off at or above {h.Off}";
        // The lesson's rule (light, answer every reading) needs no note; a changed one says what changed.
        var lesson = string.Equals($"{_defaultSettings.Measurement}", "light", StringComparison.OrdinalIgnoreCase) &&
            string.Equals($"{_defaultSettings.Answer}", "every", StringComparison.OrdinalIgnoreCase);
        return where + (lesson ? "" : $" ({_defaultSettings.Measurement}, answer {_defaultSettings.Answer})") +
            (Groups.Count > 0 ? $", {Groups.Count} group rule(s)" : "");
    }

    sealed class DeviceRule(RuleSettings settings, double threshold)
    {
        readonly Hysteresis _switch = Hysteresis.From(settings, threshold);
        bool? _state;

        public DeviceRule Fresh() => new(settings, threshold);

        public void Decide(TelemetryMessage reading, List<RuleDecision> decisions)
        {
            if (!reading.Measurements.TryGetValue(settings.Measurement, out var value))
            {
                return;
            }
            var next = _switch.Next(value, _state);
            if (next is not { } on)
            {
                return;
            }
            var changed = _state != on;
            _state = on;
            if (changed || settings.Answer == "every")
            {
                decisions.Add(new RuleDecision(reading.DeviceId, on, changed, settings.Switch));
            }
        }
    }
}

/// <summary>
/// The stadium: the latest value of each sensor, the decision from their median (or k of n), and the lights it
/// drives. Sensors silent for longer than the maximum age do not count, so one covered sensor cannot switch the lights.
/// </summary>
public sealed class GroupRule(string name, GroupRuleSettings settings, double threshold, TimeSpan maxAge)
{
    readonly Hysteresis _switch = Hysteresis.From(settings, threshold);
    readonly Dictionary<string, (double Value, DateTimeOffset At)> _latest = new(StringComparer.Ordinal);
    bool? _state;

    public string Name { get; } = name;

    public GroupRuleSettings Settings { get; } = settings;

    /// <summary>The group's current decision: null until enough fresh sensors have spoken.</summary>
    public bool? State => _state;

    public void Decide(TelemetryMessage reading, DateTimeOffset arrived, List<RuleDecision> decisions)
    {
        if (!reading.Measurements.TryGetValue(Settings.Measurement, out var value))
        {
            return;
        }
        _latest[reading.DeviceId] = (value, arrived);
        var fresh = new List<double>(_latest.Count);
        foreach (var (_, (v, at)) in _latest)
        {
            if (arrived - at <= maxAge)
            {
                fresh.Add(v);
            }
        }
        bool? next;
        if (Settings.Decision == "k-of-n")
        {
            // On when k fresh sensors are dark; off once so many are bright that k dark ones are out of reach.
            var dark = fresh.Count(v => v < _switch.On);
            var bright = fresh.Count(v => v >= _switch.Off);
            next = dark >= Settings.K ? true : fresh.Count - bright < Settings.K && fresh.Count >= Settings.K ? false : _state;
        }
        else
        {
            next = _switch.Next(Median(fresh), _state);
        }
        if (next is not { } on)
        {
            return;
        }
        var changed = _state != on;
        _state = on;
        if (changed || Settings.Answer == "every")
        {
            foreach (var light in Settings.Lights)
            {
                decisions.Add(new RuleDecision(light, on, changed, Settings.Switch));
            }
        }
    }

    static double Median(List<double> values)
    {
        values.Sort();
        var mid = values.Count / 2;
        return values.Count % 2 == 1 ? values[mid] : (values[mid - 1] + values[mid]) / 2;
    }
}
