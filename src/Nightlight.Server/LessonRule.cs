using Nightlight.Protocol;

namespace Nightlight.Server;

/// <summary>The lesson's rule: <c>led_on = light &lt; threshold</c>, answered for every reading that has light.</summary>
public sealed class LessonRule(double threshold)
{
    public double Threshold { get; } = threshold;

    /// <summary>The command for <paramref name="reading"/>, or null for a reading without light (a thermostat's).</summary>
    public CommandMessage? Decide(TelemetryMessage reading) => reading.Light is { } light ? new(light < Threshold) : null;
}
