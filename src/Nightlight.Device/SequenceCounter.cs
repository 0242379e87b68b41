using System.Buffers.Binary;
using System.Globalization;
using System.IO.Hashing;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Nightlight.Device;

/// <summary>
/// A per-device sequence number that keeps increasing across restarts, kill -9 and power cuts, without a gap after
/// kill -9. Two files: <c>PATH</c> holds the end of a reserved block, flushed to disk before any number of the block
/// is used (so a power cut skips the rest of a block but never hands out a number twice), and <c>PATH.next</c> the
/// next number, written at each take without a flush (the page cache survives kill -9). Thread-safe; owns its files.
/// <para>
/// Whenever numbering starts at 1 (no file yet, or a damaged one) the counter picks a new random <see cref="Epoch"/>,
/// kept beside it (<c>telemetry.seq</c> → <c>telemetry.epoch</c>), so the server stores the new readings instead of
/// taking them for copies of the old ones with the same numbers.
/// </para>
/// </summary>
public sealed class SequenceCounter : IDisposable
{
    /// <summary>Numbers reserved per flushed disk write.</summary>
    public const long BlockSize = 1000;

    readonly string _path;
    readonly Lock _gate = new();
    readonly FileStream _nextFile;
    long _next;
    long _reservedEnd;

    /// <summary>Opens (or creates) the counter stored in <paramref name="path"/>. The first number is 1.</summary>
    public SequenceCounter(string path, ILogger? logger = null)
    {
        logger ??= NullLogger.Instance;
        _path = path;
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        var epochPath = Path.ChangeExtension(path, ".epoch");
        var blockEnd = 1L;
        long? epoch = null;
        if (File.Exists(path))
        {
            if (long.TryParse(File.ReadAllText(path).Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var end) && end >= 1)
            {
                blockEnd = end;
                // A counter from a version without epochs goes on numbering in epoch 0, where its readings are stored.
                epoch = 0;
                if (File.Exists(epochPath))
                {
                    if (long.TryParse(File.ReadAllText(epochPath).Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var e) && e <= Protocol.TelemetryParser.MaxEpoch)
                    {
                        epoch = e;
                    }
                    else
                    {
                        logger.LogError("Epoch file {Path} is damaged: numbering starts again at 1 in a new epoch", epochPath);
                        (blockEnd, epoch) = (1, null);
                    }
                }
            }
            else
            {
                logger.LogError("Sequence file {Path} is damaged: numbering starts again at 1 in a new epoch", path);
            }
        }
        if (epoch is null)
        {
            epoch = NewEpoch();
            // On disk before any number of it is used: a restart then either finds it with its numbers or starts anew.
            WriteFlushed(epochPath, epoch.Value);
        }
        Epoch = epoch.Value;
        _nextFile = new FileStream(path + ".next", FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.Read, 1);
        // The exact next number when the last process died with its page cache intact; the block end otherwise (a
        // power cut, or a file from an older version), which skips the rest of that block.
        _next = TryReadNext(out var next) && next <= blockEnd && next >= blockEnd - BlockSize ? next : blockEnd;
        _reservedEnd = blockEnd;
    }

    /// <summary>
    /// The numbering the sequence numbers belong to: 1 to <see cref="Protocol.TelemetryParser.MaxEpoch"/>, new each
    /// time numbering starts at 1; 0 for a counter that began before epochs existed.
    /// </summary>
    public long Epoch { get; }

    /// <summary>A new random epoch, 1 to <see cref="Protocol.TelemetryParser.MaxEpoch"/> (exact in a JSON double).</summary>
    public static long NewEpoch() => Random.Shared.NextInt64(1, Protocol.TelemetryParser.MaxEpoch + 1);

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
            var taken = _next++;
            WriteNext(_next);
            return taken;
        }
    }

    void Reserve(long end)
    {
        WriteFlushed(_path, end);
        _reservedEnd = end;
    }

    /// <summary>Writes a new file and renames it over the old one: a power cut leaves either the old number or the new one.</summary>
    static void WriteFlushed(string path, long value)
    {
        var temporary = path + ".tmp";
        using (var stream = new FileStream(temporary, FileMode.Create, FileAccess.Write, FileShare.None, 1, FileOptions.None))
        {
            stream.Write(System.Text.Encoding.ASCII.GetBytes(value.ToString(CultureInfo.InvariantCulture)));
            stream.Flush(flushToDisk: true);
        }
        File.Move(temporary, path, overwrite: true);
    }

    void WriteNext(long next)
    {
        Span<byte> bytes = stackalloc byte[12];
        BinaryPrimitives.WriteInt64LittleEndian(bytes, next);
        BinaryPrimitives.WriteUInt32LittleEndian(bytes[8..], Crc32.HashToUInt32(bytes[..8]));
        RandomAccess.Write(_nextFile.SafeFileHandle, bytes, 0);
    }

    bool TryReadNext(out long next)
    {
        next = 0;
        Span<byte> bytes = stackalloc byte[12];
        if (RandomAccess.Read(_nextFile.SafeFileHandle, bytes, 0) != 12 ||
            Crc32.HashToUInt32(bytes[..8]) != BinaryPrimitives.ReadUInt32LittleEndian(bytes[8..]))
        {
            return false;
        }
        next = BinaryPrimitives.ReadInt64LittleEndian(bytes);
        return next >= 1;
    }

    /// <summary>Closes the file of the next number.</summary>
    public void Dispose() => _nextFile.Dispose();
}
