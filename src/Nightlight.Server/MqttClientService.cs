using Microsoft.Extensions.Hosting;

namespace Nightlight.Server;

/// <summary>
/// A background service holding an MQTT connection. It stops at the start of shutdown, before the web server
/// waits for open connections, so an in-process client says goodbye to the broker instead of being cut off.
/// </summary>
public abstract class MqttClientService : BackgroundService, IHostedLifecycleService
{
    public Task StoppingAsync(CancellationToken cancellationToken) => base.StopAsync(cancellationToken);

    public Task StartingAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StartedAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StoppedAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}
