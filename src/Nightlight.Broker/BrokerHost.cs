using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Nightlight.Broker.Core.Engine;
using Nightlight.Mqtt;
using Nightlight.Security;

namespace Nightlight.Broker;

/// <summary>
/// Starts the broker core before Kestrel accepts connections (its session store is loaded first), says where it
/// listens and who may connect without credentials, and stops it before Kestrel waits for open connections: MQTT
/// connections never end by themselves.
/// </summary>
sealed class BrokerHost(MqttBroker broker, BrokerAccess access, BrokerListeners listeners, DeviceIdentities identities, BrokerStartSignal started,
    BrokerGauges gauges, IOptions<BrokerOptions> options, ILogger<BrokerHost> logger) : IHostedLifecycleService
{
    // Resolved with the host so the broker's gauges exist from the start; the container disposes them.
    readonly BrokerGauges _gauges = gauges;

    public Task StartingAsync(CancellationToken cancellationToken) => broker.StartAsync(cancellationToken);

    public Task StartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StartedAsync(CancellationToken cancellationToken)
    {
        var o = options.Value;
        logger.LogInformation("MQTT broker listening on mqtt://{Bind}:{Port}", o.Bind, o.MqttPort);
        var anonymous = listeners.All.Where(access.AnonymousAllowedOn).Select(l => l.Address).ToList();
        var authenticated = listeners.All.Where(l => !access.AnonymousAllowedOn(l)).Select(l => l.Address).ToList();
        if (anonymous.Count > 0)
        {
            logger.LogInformation("Anonymous clients allowed on {Anonymous}; credentials required on {Authenticated}",
                string.Join(", ", anonymous), authenticated.Count == 0 ? "none" : string.Join(", ", authenticated));
            if (listeners.All.Any(l => !l.OnLoopback && access.AnonymousAllowedOn(l)))
            {
                logger.LogWarning("Anonymous clients are allowed beyond loopback (Broker:AllowAnonymous): anyone who reaches those ports can read and publish every topic");
            }
        }
        else
        {
            logger.LogInformation("Clients must authenticate on every listener ({Count} identities; add one with: nightlight devices add ID)", identities.Count);
        }
        started.Signal();
        return Task.CompletedTask;
    }

    public Task StoppingAsync(CancellationToken cancellationToken) => broker.StopAsync(cancellationToken);

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StoppedAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}
