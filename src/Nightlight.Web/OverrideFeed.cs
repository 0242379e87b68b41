using Microsoft.Extensions.Hosting;
using Nightlight.Server.Commands;

namespace Nightlight.Web;

/// <summary>
/// Tells open pages when a manual override begins or ends (event <c>override</c>: id, ledOn, until; until null once
/// the rule decides again). Only where a server runs in this process; the pages load the current ones from
/// <c>/api/overrides</c>.
/// </summary>
sealed class OverrideFeed(LiveEvents events, ManualOverrides? overrides = null) : IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken)
    {
        if (overrides is not null)
        {
            overrides.Changed += Send;
        }
        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken)
    {
        if (overrides is not null)
        {
            overrides.Changed -= Send;
        }
        return Task.CompletedTask;
    }

    void Send(string deviceId, ManualOverride? now, string why) =>
        events.Publish("override", new { id = deviceId, ledOn = now?.LedOn, until = now?.Until, why });
}
