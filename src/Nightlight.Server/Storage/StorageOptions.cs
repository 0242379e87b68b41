using System.ComponentModel.DataAnnotations;

namespace Nightlight.Server.Storage;

/// <summary>Configuration section <c>Storage</c>. The data directory itself is <c>Data:Directory</c>.</summary>
public sealed class StorageOptions
{
    public const string Section = "Storage";

    /// <summary><c>sqlite</c> (default) or <c>postgresql</c>; empty picks PostgreSQL when a connection string is given.</summary>
    public string? Provider { get; set; }

    /// <summary>PostgreSQL connection string (Npgsql syntax: <c>Host=...;Port=...;Database=...;Username=...</c>).</summary>
    public string? ConnectionString { get; set; }

    /// <summary>Readings kept, for example <c>30d</c>; empty or <c>0</c> keeps everything.</summary>
    public string? Retention { get; set; } = "30d";

    /// <summary>How often old readings are deleted.</summary>
    public string RetentionInterval { get; set; } = "1h";

    /// <summary>
    /// Most readings, commands and device updates written in one transaction. A store that has fallen behind writes
    /// batches this large until it has caught up; the larger they are, the more readings of each device share an index
    /// page, and the faster it catches up: with 1,000 devices SQLite wrote 27,000 readings/s in batches of 2,000,
    /// 42,000 in batches of 5,000 and 60,000 in batches of 20,000 (docs/benchmarks/storage.md#batch-size).
    /// </summary>
    [Range(1, 1_000_000)]
    public int BatchSize { get; set; } = 20_000;

    /// <summary>
    /// How long the writer gathers a batch before writing it, unless it fills first. A transaction per handful of
    /// readings costs more than the readings themselves (the device rows and minute rollups are written once per
    /// batch); this trades that for a reading reaching the history API up to this much later.
    /// </summary>
    public string FlushInterval { get; set; } = "200ms";

    /// <summary>
    /// Writes waiting for the database. When full (a database outage), a new reading waits for room, which slows the
    /// ingest down; command states and device rows are dropped, counted and logged.
    /// </summary>
    [Range(1_000, 100_000_000)]
    public int QueueCapacity { get; set; } = 1_000_000;

    /// <summary>True when this configuration selects PostgreSQL.</summary>
    public bool UsesPostgres => string.Equals(Provider, "postgresql", StringComparison.OrdinalIgnoreCase) ||
        string.Equals(Provider, "postgres", StringComparison.OrdinalIgnoreCase) ||
        (string.IsNullOrEmpty(Provider) && !string.IsNullOrEmpty(ConnectionString));
}
