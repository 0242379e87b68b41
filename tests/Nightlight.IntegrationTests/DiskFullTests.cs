using System.Text;
using Nightlight.Device;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>A device's outbox on a real disk that fills up and is freed again.</summary>
public class DiskFullTests
{
    static byte[] Reading(int i) => Encoding.UTF8.GetBytes($"{{\"light\": {i % 1024}, \"seq\": {i}}}");

    [Fact]
    public void A_full_disk_drops_the_oldest_readings_counts_them_and_recovers_when_space_is_back()
    {
        using var disk = new SmallDisk(kibibytes: 512);
        var options = new OutboxOptions { SegmentBytes = 16 * 1024, Sync = OutboxSync.Always };
        using var outbox = new Outbox(System.IO.Path.Combine(disk.Path, "outbox"), options);
        for (var i = 1; i <= 100; i++)
        {
            outbox.Append(Reading(i));
        }
        disk.Fill();
        // Appends on a full disk neither throw nor stop: the oldest unsent readings make room, each counted.
        for (var i = 101; i <= 3000; i++)
        {
            outbox.Append(Reading(i));
        }
        Assert.True(outbox.Dropped > 0, "a full disk must drop (and count) readings");
        Assert.Equal(3000, outbox.Dropped + outbox.Count);

        disk.Free();
        for (var i = 3001; i <= 3100; i++)
        {
            outbox.Append(Reading(i));
        }
        Assert.Equal(3100, outbox.Dropped + outbox.Count);
        var kept = new List<string>();
        while (outbox.Count > 0)
        {
            var batch = outbox.Peek(50);
            kept.AddRange(batch.Payloads.Select(p => Encoding.UTF8.GetString(p)));
            outbox.Commit(batch, batch.Count);
        }
        // Every reading taken since space came back is kept, in order, after what survived the full disk.
        Assert.Equal(Enumerable.Range(3001, 100).Select(i => Encoding.UTF8.GetString(Reading(i))), kept.TakeLast(100));
        var seqs = kept.Select(k => int.Parse(k[(k.LastIndexOf(' ') + 1)..^1], System.Globalization.CultureInfo.InvariantCulture)).ToList();
        Assert.Equal(seqs.Order(), seqs);
    }
}
