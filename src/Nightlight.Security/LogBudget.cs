using System.Diagnostics;

namespace Nightlight.Security;

/// <summary>
/// At most <c>perSecond</c> log lines a second for one kind of event: every isolated refusal gets its line, a flood
/// gets a few and then a count of what was left out, so hostile clients cannot fill the disk through the log.
/// </summary>
public sealed class LogBudget(int perSecond)
{
    readonly Lock _gate = new();
    long _windowStart = Stopwatch.GetTimestamp();
    int _used;
    long _suppressed;

    /// <summary>True when this event may log; <paramref name="suppressed"/> is how many were left out before it.</summary>
    public bool TryTake(out long suppressed)
    {
        lock (_gate)
        {
            var now = Stopwatch.GetTimestamp();
            if (now - _windowStart >= Stopwatch.Frequency)
            {
                _windowStart = now;
                _used = 0;
            }
            if (_used < perSecond)
            {
                _used++;
                suppressed = _suppressed;
                _suppressed = 0;
                return true;
            }
            _suppressed++;
            suppressed = 0;
            return false;
        }
    }
}
