using System.Globalization;

namespace Nightlight.Device;

/// <summary>
/// A per-device sequence number that keeps increasing across restarts, kill -9 and power cuts. It reserves numbers
/// in blocks: the file holds the end of the reserved block, written (and flushed to disk) before any number of the
/// block is used, so a crash skips the rest of a block but never hands out a number twice. Thread-safe.
/// </summary>
public sealed class SequenceCounter
{
    /// <summary>Numbers reserved per disk write.</summary>
    public const long BlockSize = 1000;

    readonly string _path;
    readonly Lock _gate = new();
    long _next;
    long _reservedEnd;

    /// <summary>Opens (or creates) the counter stored in <paramref name="path"/>. The first number is 1.</summary>
    public SequenceCounter(string path)
    {
        _path = path;
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        _next = File.Exists(path) && long.TryParse(File.ReadAllText(path).Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var end) ? end : 1;
        _reservedEnd = _next;
    }

    /// <summary>The number <see cref="Next"/> will return.</summary>
    public long Peek()
    {
        lock (_gate)
        {
            return _next;
        }
    }

    /// <summary>Takes the next number.</summary>
    public long Next()
    {
        lock (_gate)
        {
            if (_next >= _reservedEnd)
            {
                Reserve(_next + BlockSize);
            }
            return _next++;
        }
    }

    void Reserve(long end)
    {
        // Write a new file and rename it over the old one: a power cut leaves either the old block end or the new one.
        var temporary = _path + ".tmp";
        using (var stream = new FileStream(temporary, FileMode.Create, FileAccess.Write, FileShare.None, 1, FileOptions.None))
        {
            stream.Write(System.Text.Encoding.ASCII.GetBytes(end.ToString(CultureInfo.InvariantCulture)));
            stream.Flush(flushToDisk: true);
        }
        File.Move(temporary, _path, overwrite: true);
        _reservedEnd = end;
    }
}
