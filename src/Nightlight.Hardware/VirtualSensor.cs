namespace Nightlight.Hardware;

/// <summary>The kinds of simulated sensor a <see cref="VirtualBoard"/> can carry, as in CounterFit.</summary>
public enum SensorKind
{
    /// <summary>Light level: 0–1023 raw ADC counts, like the lesson's Grove light sensor.</summary>
    Light,
    /// <summary>Air temperature in °C: −40–85.</summary>
    Temperature,
    /// <summary>Relative humidity in %: 0–100.</summary>
    Humidity,
    /// <summary>Soil moisture: 0–1023 raw ADC counts (high is dry, as on the Grove capacitive sensor).</summary>
    SoilMoisture,
    /// <summary>A push button: 0 released, 1 pressed; read as a boolean.</summary>
    Button,
}

/// <summary>How a sensor's value is chosen.</summary>
public enum SensorMode
{
    /// <summary>The value set last (a slider).</summary>
    Fixed,
    /// <summary>A new random value between minimum and maximum on every read.</summary>
    Random,
    /// <summary>A day/night curve between minimum and maximum, one full cycle per day length.</summary>
    DayNight,
    /// <summary>Values from a CSV file, one per replay step, starting over at the end.</summary>
    Replay,
}

/// <summary>The fixed facts of a sensor kind: its range, unit and start value.</summary>
/// <param name="Minimum">Lowest value the kind can report.</param>
/// <param name="Maximum">Highest value the kind can report.</param>
/// <param name="Unit">Unit shown next to the value.</param>
/// <param name="Initial">Value a new sensor starts at.</param>
/// <param name="Integer">True when readings are whole numbers.</param>
public sealed record SensorRange(double Minimum, double Maximum, string Unit, double Initial, bool Integer)
{
    /// <summary>The range of <paramref name="kind"/>.</summary>
    public static SensorRange Of(SensorKind kind) => kind switch
    {
        SensorKind.Light => new(0, 1023, "", 510, true),
        SensorKind.Temperature => new(-40, 85, "°C", 20, false),
        SensorKind.Humidity => new(0, 100, "%", 50, false),
        SensorKind.SoilMoisture => new(0, 1023, "", 450, true),
        SensorKind.Button => new(0, 1, "", 0, true),
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, null),
    };
}

/// <summary>What a sensor is set to, as a whole, so a change is never half applied.</summary>
/// <param name="Mode">How the value is chosen.</param>
/// <param name="Value">The slider value, used in <see cref="SensorMode.Fixed"/>.</param>
/// <param name="Minimum">Lower bound for random values and the curve.</param>
/// <param name="Maximum">Upper bound for random values and the curve.</param>
/// <param name="Replay">Values replayed in <see cref="SensorMode.Replay"/>.</param>
/// <param name="ReplayStep">Time each replayed value lasts.</param>
public sealed record SensorSettings(
    SensorMode Mode,
    double Value,
    double Minimum,
    double Maximum,
    IReadOnlyList<double> Replay,
    TimeSpan ReplayStep);

/// <summary>One simulated sensor on a numbered port. Thread-safe: settings are swapped whole.</summary>
public sealed class VirtualSensor
{
    readonly TimeProvider _clock;
    readonly long _start;
    volatile SensorSettings _settings;
    long _replayStart;

    internal VirtualSensor(int port, SensorKind kind, TimeSpan dayLength, TimeProvider clock)
    {
        Port = port;
        Kind = kind;
        Range = SensorRange.Of(kind);
        DayLength = dayLength;
        _clock = clock;
        _start = clock.GetTimestamp();
        _settings = new SensorSettings(SensorMode.Fixed, Range.Initial, Range.Minimum, Range.Maximum, [], TimeSpan.FromSeconds(1));
    }

    /// <summary>Port number, 0–25 as on CounterFit.</summary>
    public int Port { get; }

    /// <summary>What the sensor measures.</summary>
    public SensorKind Kind { get; }

    /// <summary>Range, unit and start value of the kind.</summary>
    public SensorRange Range { get; }

    /// <summary>One full day and night of the <see cref="SensorMode.DayNight"/> curve.</summary>
    public TimeSpan DayLength { get; }

    /// <summary>The current settings.</summary>
    public SensorSettings Settings => _settings;

    /// <summary>Raised after the settings changed.</summary>
    internal event Action? Changed;

    /// <summary>Holds the sensor at <paramref name="value"/>, clamped to the kind's range (a slider).</summary>
    public void Set(double value) => Apply(_settings with { Mode = SensorMode.Fixed, Value = Clamp(value) });

    /// <summary>Applies new settings; values are clamped to the kind's range, an empty replay keeps the old value.</summary>
    public void Apply(SensorSettings settings)
    {
        var min = Clamp(Math.Min(settings.Minimum, settings.Maximum));
        var max = Clamp(Math.Max(settings.Minimum, settings.Maximum));
        var replay = settings.Replay.Select(Clamp).ToArray();
        var mode = settings.Mode == SensorMode.Replay && replay.Length == 0 ? SensorMode.Fixed : settings.Mode;
        var step = settings.ReplayStep > TimeSpan.Zero ? settings.ReplayStep : TimeSpan.FromSeconds(1);
        Interlocked.Exchange(ref _replayStart, _clock.GetTimestamp());
        _settings = new SensorSettings(mode, Clamp(settings.Value), min, max, replay, step);
        Changed?.Invoke();
    }

    /// <summary>Reads the value now, within the kind's range; whole numbers for integer kinds.</summary>
    public double Read()
    {
        var s = _settings;
        var value = s.Mode switch
        {
            SensorMode.Random => s.Minimum + System.Random.Shared.NextDouble() * (s.Maximum - s.Minimum),
            // Starts half way up and rising, like mid-morning; one full sine per day length.
            SensorMode.DayNight => s.Minimum + (s.Maximum - s.Minimum) *
                (0.5 + 0.5 * Math.Sin(2 * Math.PI * _clock.GetElapsedTime(_start).TotalSeconds / DayLength.TotalSeconds)),
            SensorMode.Replay => s.Replay[(int)(_clock.GetElapsedTime(Interlocked.Read(ref _replayStart)).Ticks / s.ReplayStep.Ticks % s.Replay.Count)],
            _ => s.Value,
        };
        return Range.Integer ? Math.Round(value) : Math.Round(value, 2);
    }

    double Clamp(double value) => double.IsFinite(value) ? Math.Clamp(value, Range.Minimum, Range.Maximum) : Range.Initial;
}
