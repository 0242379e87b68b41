using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Nightlight.Server.Storage;

/// <summary>Deletes readings older than <see cref="StorageOptions.Retention"/>, every <see cref="StorageOptions.RetentionInterval"/>.</summary>
public sealed class RetentionService(ITelemetryStore store, IOptions<StorageOptions> options, ILogger<RetentionService> logger) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var o = options.Value;
        if (string.IsNullOrEmpty(o.Retention) || o.Retention == "0")
        {
            return;
        }
        var keep = Protocol.Durations.Parse(o.Retention, "Storage:Retention");
        var interval = Protocol.Durations.Parse(o.RetentionInterval, "Storage:RetentionInterval");
        using var timer = new PeriodicTimer(interval);
        do
        {
            try
            {
                var deleted = await store.DeleteOlderThanAsync(DateTimeOffset.UtcNow - keep, stoppingToken);
                if (deleted > 0)
                {
                    logger.LogInformation("Retention: deleted {Count} readings older than {Retention}", deleted, o.Retention);
                }
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                logger.LogWarning("Retention run failed: {Error}", e.Message);
            }
        }
        while (await timer.WaitForNextTickAsync(stoppingToken).ConfigureAwait(false));
    }
}
