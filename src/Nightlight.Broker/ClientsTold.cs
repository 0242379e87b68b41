using System.Collections.Concurrent;

namespace Nightlight.Broker;

/// <summary>
/// The clients already given one kind of warning, so each hears it once; bounded at 1,000, so a flood of client ids
/// cannot grow it (past that, nobody new is warned).
/// </summary>
sealed class ClientsTold
{
    const int Max = 1000;

    readonly ConcurrentDictionary<string, byte> _told = new(StringComparer.Ordinal);

    /// <summary>True the first time it is asked for <paramref name="clientId"/>, while fewer than 1,000 were told.</summary>
    public bool FirstTime(string clientId) => _told.Count < Max && _told.TryAdd(clientId, 0);
}
