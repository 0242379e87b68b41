using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Nightlight.Broker.Core;
using Nightlight.Broker.Core.Engine;
using Nightlight.Broker.Core.Packets;
using Nightlight.Security;

namespace Nightlight.Broker;

/// <summary>
/// Ends the live connections of an identity as soon as <c>nightlight devices remove|rotate|revoke</c> (another process)
/// changes the identities file: the file is read again when it changes (checked every second), and each identity
/// removed, rotated or stripped of a certificate has its connections closed (MQTT 5: DISCONNECT Administrative
/// action). Anonymous clients are closed the same way once the first identity turns anonymous access off.
/// </summary>
sealed partial class IdentityWatch(DeviceIdentities identities, BrokerAccess access, BrokerListeners listeners, MqttBroker broker, ILogger<IdentityWatch> logger)
    : BackgroundService
{
    static readonly TimeSpan Period = TimeSpan.FromSeconds(1);

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var known = identities.Credentials();
        using var timer = new PeriodicTimer(Period);
        while (await timer.WaitForNextTickAsync(stoppingToken))
        {
            IReadOnlyDictionary<string, IdentityCredentials> now;
            try
            {
                now = identities.Credentials();
            }
            catch (InvalidOperationException e)
            {
                // A file being rewritten by hand, half valid: the broker keeps the last good identities.
                logger.LogWarning("Identities file unreadable, keeping the last good one: {Problem}", e.Message);
                continue;
            }
            foreach (var (id, before) in known)
            {
                var change = !now.TryGetValue(id, out var after) ? "removed" : after.Withdraws(before) ? "changed (rotated or revoked)" : null;
                if (change is null)
                {
                    continue;
                }
                var closed = broker.DisconnectWhere(c => c.Identity == id, ReasonCode.AdministrativeAction);
                LogWithdrawn(id, change, closed);
            }
            if (known.Count == 0 && now.Count > 0)
            {
                var closed = broker.DisconnectWhere(c => c.Identity is null && !access.AnonymousAllowedOn(listeners.ByName(c.Endpoint.Listener)), ReasonCode.AdministrativeAction);
                if (closed > 0)
                {
                    LogAnonymousClosed(closed);
                }
            }
            known = now;
        }
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "Identity {Id} was {Change}: closed its {Closed} connections")]
    partial void LogWithdrawn(string id, string change, int closed);

    [LoggerMessage(Level = LogLevel.Warning, Message = "The first identity turned anonymous access off: closed {Closed} anonymous connections")]
    partial void LogAnonymousClosed(int closed);
}
