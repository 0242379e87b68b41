using System.Globalization;
using Nightlight.Server.Commands;

namespace Nightlight.Cli;

/// <summary>
/// Says on the terminal when a manual command (the dashboard's "LED on for 10 min", the API) holds a device's rule
/// back, until when, and how to end it; and when the rule decides again. Without these lines the server's answers
/// simply stopped.
/// </summary>
/// <param name="withPrompt">The process reads typed lines (<c>up</c>), so <c>resume</c> can end an override.</param>
sealed class OverrideLines(ManualOverrides overrides, LessonOutput output, bool withPrompt) : IHostedService
{
    /// <summary>A time as the terminal shows it: the local clock, to the second.</summary>
    public static string Time(DateTimeOffset at) => at.ToLocalTime().ToString("HH:mm:ss", CultureInfo.InvariantCulture);

    public Task StartAsync(CancellationToken cancellationToken)
    {
        overrides.Changed += Say;
        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken)
    {
        overrides.Changed -= Say;
        return Task.CompletedTask;
    }

    void Say(string deviceId, ManualOverride? now, string why)
    {
        var who = $"server → {deviceId}";
        if (now is not null)
        {
            var end = withPrompt ? "type 'resume' or press End override on the dashboard to end it"
                : $"DELETE /api/devices/{deviceId}/override ends it";
            output.Say(who, $"Override: LED {(now.LedOn ? "on" : "off")} until {Time(now.Until)}, the rule is paused ({end})");
        }
        else
        {
            output.Say(who, why == "expired" ? "Override over; the rule decides again" : "Override ended; the rule decides again");
        }
    }
}
