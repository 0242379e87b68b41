using Nightlight.Protocol;

namespace Nightlight.Server;

/// <summary>The lesson's rule: <c>led_on = light &lt; threshold</c>, answered for every reading.</summary>
public sealed class LessonRule(double threshold)
{
    public double Threshold { get; } = threshold;

    public CommandMessage Decide(TelemetryMessage reading) => new(reading.Light < Threshold);
}
