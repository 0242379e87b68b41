using Microsoft.Extensions.Hosting;

namespace Nightlight.Mqtt;

/// <summary>
/// A background service holding an MQTT connection. It stops at the start of shutdown, before the web server
/// waits for open connections, so an in-process client says goodbye to the broker instead of being cut off.
/// </summary>
public abstract class MqttClientService : BackgroundService, IHostedLifecycleService
{
    /// <inheritdoc/>
    public Task StoppingAsync(CancellationToken cancellationToken) => base.StopAsync(cancellationToken);

    /// <inheritdoc/>
    public Task StartingAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    /// <inheritdoc/>
    public Task StartedAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    /// <inheritdoc/>
    public Task StoppedAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}
