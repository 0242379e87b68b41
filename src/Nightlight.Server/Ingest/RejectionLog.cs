using Microsoft.Extensions.Logging;
using Nightlight.Security;

namespace Nightlight.Server.Ingest;

/// <summary>
/// At most 10 lines a second about rejected messages, then one line with how many were left out: a device sending
/// garbage in a loop cannot fill the disk through the log. The counters still count every one.
/// </summary>
sealed class RejectionLog
{
    readonly LogBudget _budget = new(10);

    /// <summary>True when this rejection may be logged (after a line about those left out before it, if any).</summary>
    public bool ShouldLog(ILogger logger)
    {
        if (!_budget.TryTake(out var suppressed))
        {
            return false;
        }
        if (suppressed > 0)
        {
            logger.LogWarning("{Suppressed} more rejected messages were not logged (more than 10 a second)", suppressed);
        }
        return true;
    }
}
