using System.ComponentModel.DataAnnotations;

namespace Nightlight.Server.Commands;

/// <summary>Configuration section <c>Commands</c>: how tracked commands are retried and how long they live.</summary>
public sealed class CommandOptions
{
    public const string Section = "Commands";

    /// <summary>A tracked command not acknowledged within this time is expired (default 30s).</summary>
    public string Expiry { get; set; } = "30s";

    /// <summary>Time between resends of an unacknowledged command to a device that acknowledges (default 2s).</summary>
    public string RetryInterval { get; set; } = "2s";

    /// <summary>How long a manual command overrides the rules when the request does not say (default 5m).</summary>
    public string DefaultOverride { get; set; } = "5m";

    /// <summary>
    /// QoS of tracked commands (LED changes, manual commands). 1 (default): <c>delivered</c> means the broker
    /// acknowledged it. 0: <c>delivered</c> means it was written to the broker's connection, and the broker keeps no
    /// state for it. The server does not wait for one command's acknowledgement before it sends the next, so 1 costs
    /// about what 0 does (docs/benchmarks/server-round-trips.md#tracked-commands). Devices that acknowledge commands
    /// confirm them end to end either way.
    /// </summary>
    [Range(0, 1)]
    public int TrackedQos { get; set; } = 1;

    /// <summary>
    /// Most commands per device kept in memory for the API until the store has written them: a store that has fallen
    /// behind shows at least this many of a device's newest.
    /// </summary>
    [Range(1, 10_000)]
    public int RecentPerDevice { get; set; } = 50;
}
