namespace Nightlight.Server.Storage;

/// <summary>
/// Where readings, commands and devices are kept: a SQLite file by default, PostgreSQL when configured. Only
/// <see cref="TelemetryStoreWriter"/> writes; the history API and export read.
/// </summary>
public interface ITelemetryStore : IAsyncDisposable
{
    /// <summary>Short name for logs: <c>sqlite</c> or <c>postgresql</c>.</summary>
    string Provider { get; }

    /// <summary>Where the data lives, for the start-up line (a file path or host/database; never a password).</summary>
    string Location { get; }

    /// <summary>Creates the tables when they are missing.</summary>
    Task InitializeAsync(CancellationToken cancellationToken);

    /// <summary>A quick check of the stored data after <see cref="InitializeAsync"/>: null when sound, else what is damaged.</summary>
    Task<string?> CheckIntegrityAsync(CancellationToken cancellationToken) => Task.FromResult<string?>(null);

    /// <summary>
    /// Writes one batch in one transaction. A reading whose device, <c>epoch</c> and <c>seq</c> are already stored is skipped;
    /// commands and devices are inserted or updated by id.
    /// </summary>
    /// <returns>Readings actually inserted.</returns>
    Task<int> WriteAsync(IReadOnlyList<StoredReading> readings, IReadOnlyList<CommandRecord> commands,
        IReadOnlyList<DeviceRecord> devices, CancellationToken cancellationToken);

    /// <summary>Raw readings of a device with <paramref name="from"/> ≤ ts &lt; <paramref name="to"/>, oldest first.</summary>
    Task<IReadOnlyList<StoredReading>> ReadingsAsync(string deviceId, DateTimeOffset from, DateTimeOffset to, int limit, CancellationToken cancellationToken);

    /// <summary>The same range streamed without a limit, for export.</summary>
    IAsyncEnumerable<StoredReading> StreamReadingsAsync(string deviceId, DateTimeOffset from, DateTimeOffset to, CancellationToken cancellationToken);

    /// <summary>Readings counted per device in a range (for export progress).</summary>
    Task<long> CountReadingsAsync(string deviceId, DateTimeOffset from, DateTimeOffset to, CancellationToken cancellationToken);

    /// <summary>
    /// Readings grouped into buckets of <paramref name="bucket"/> starting at <paramref name="from"/>, with min, avg,
    /// max of each named measurement. Empty buckets are left out.
    /// </summary>
    Task<IReadOnlyList<ReadingBucket>> BucketsAsync(string deviceId, DateTimeOffset from, DateTimeOffset to, TimeSpan bucket,
        IReadOnlyCollection<string> measurements, CancellationToken cancellationToken);

    /// <summary>
    /// The numbering of a device's stored readings per epoch, oldest epoch first by its lowest stored seq: what is
    /// missing between the first and the last stored seq of each (see <see cref="EpochNumbering"/>).
    /// </summary>
    Task<IReadOnlyList<EpochNumbering>> NumberingAsync(string deviceId, CancellationToken cancellationToken);

    /// <summary>Readings missing on the way, summed over every device and epoch (<see cref="EpochNumbering.Missing"/> of each).</summary>
    Task<long> MissingAsync(CancellationToken cancellationToken);

    /// <summary>Commands of a device, newest first.</summary>
    Task<IReadOnlyList<CommandRecord>> CommandsAsync(string deviceId, int limit, CancellationToken cancellationToken);

    /// <summary>Every known device.</summary>
    Task<IReadOnlyList<DeviceRecord>> DevicesAsync(CancellationToken cancellationToken);

    /// <summary>Deletes readings taken before <paramref name="cutoff"/> and commands created before it.</summary>
    /// <returns>Readings deleted.</returns>
    Task<long> DeleteOlderThanAsync(DateTimeOffset cutoff, CancellationToken cancellationToken);
}
