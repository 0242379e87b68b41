using Nightlight.Security;

namespace Nightlight.Cli;

/// <summary>
/// What a start may create in the data directory (the directory itself, the SQLite file, a device's state), noted
/// before the start so a start that fails leaves nothing behind: a wrong port must not leave an empty database that a
/// later <c>export</c> or server would take for real data.
/// </summary>
sealed class StartFootprint
{
    static readonly string[] StoreFiles = ["nightlight.db", "nightlight.db-wal", "nightlight.db-shm", "devices"];

    readonly string _directory;
    readonly bool _directoryExisted;
    readonly string[] _missingBefore;

    public StartFootprint(IConfiguration config)
    {
        _directory = DataDirectory.Resolve(config);
        _directoryExisted = Directory.Exists(_directory);
        _missingBefore = StoreFiles.Select(name => Path.Combine(_directory, name)).Where(path => !Path.Exists(path)).ToArray();
    }

    /// <summary>Removes what was not there before the start; never anything that was.</summary>
    public void RemoveWhatStartCreated()
    {
        try
        {
            if (!_directoryExisted)
            {
                if (Directory.Exists(_directory))
                {
                    Directory.Delete(_directory, recursive: true);
                }
                return;
            }
            foreach (var path in _missingBefore)
            {
                if (Directory.Exists(path))
                {
                    Directory.Delete(path, recursive: true);
                }
                else if (File.Exists(path))
                {
                    File.Delete(path);
                }
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // The start's own error line is what matters; a file that cannot be removed is left as it is.
        }
    }
}
