using Microsoft.Extensions.Logging;

namespace Nightlight.Broker;

/// <summary>
/// The lesson's code says <c>id = '&lt;ID&gt;'</c> and asks the learner to put a unique id there. Left as it is, every
/// learner's device and server share the topic <c>&lt;ID&gt;/telemetry</c>; this says so once per client.
/// </summary>
sealed class LessonPlaceholder(ILogger<LessonPlaceholder> logger)
{
    public const string Text = "<ID>";

    readonly ClientsTold _told = new();

    /// <summary>True when <paramref name="value"/> still holds the placeholder (cheap; call before <see cref="Warn"/>).</summary>
    public static bool In(string? value) => value?.Contains(Text, StringComparison.Ordinal) == true;

    /// <summary>Logs one warning for this client, naming what still holds the placeholder.</summary>
    public void Warn(string clientId, string what, string value)
    {
        if (!_told.FirstTime(clientId))
        {
            return;
        }
        logger.LogWarning("Client {ClientId}: the {What} '{Value}' still has the lesson's placeholder <ID>; replace <ID> with your device's own id (for example nightlight1) in your code",
            clientId, what, value);
    }
}
