using Microsoft.Extensions.Logging;

namespace Nightlight.Server.Storage;

/// <summary>
/// Readings lost on the way over every device (<see cref="ITelemetryStore.MissingAsync"/>), for <c>/metrics</c>. The store
/// counts them at a scrape when the last count is older than <see cref="MaxAge"/>, so scrapes however frequent cost at most
/// one count per <see cref="MaxAge"/>; while the store cannot answer, the last count stands.
/// </summary>
public sealed class MissingReadings(ITelemetryStore store, ILogger logger)
{
    /// <summary>How old a count may be before a scrape counts again.</summary>
    public static readonly TimeSpan MaxAge = TimeSpan.FromSeconds(10);

    static readonly TimeSpan CountTimeout = TimeSpan.FromSeconds(3);

    readonly Lock _gate = new();
    long _missing;
    long _countedAt = long.MinValue;

    /// <summary>The last count, counted again first when it is older than <see cref="MaxAge"/>.</summary>
    public long Read()
    {
        lock (_gate)
        {
            if (_countedAt != long.MinValue && Environment.TickCount64 - _countedAt < MaxAge.TotalMilliseconds)
            {
                return _missing;
            }
            _countedAt = Environment.TickCount64;
            try
            {
                // A metrics callback is synchronous; the count is one aggregate query over the seq index.
                using var timeout = new CancellationTokenSource(CountTimeout);
                _missing = store.MissingAsync(timeout.Token).GetAwaiter().GetResult();
            }
            catch (Exception e)
            {
                logger.LogDebug("Could not count missing readings for /metrics; keeping the last count ({Missing}): {Error}", _missing, e.Message);
            }
            return _missing;
        }
    }
}
