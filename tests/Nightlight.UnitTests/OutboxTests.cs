using System.Text;
using Nightlight.Device;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>The durable outbox and the sequence counter on real files.</summary>
public class OutboxTests : IDisposable
{
    readonly TempDirectory _directory = new("outbox");

    public void Dispose() => _directory.Dispose();

    static byte[] Reading(int i) => Encoding.UTF8.GetBytes($"{{\"light\": {i}, \"seq\": {i}}}");

    static List<string> Drain(Outbox outbox, int batchSize = 7)
    {
        var all = new List<string>();
        while (outbox.Count > 0)
        {
            var batch = outbox.Peek(batchSize);
            all.AddRange(batch.Payloads.Select(p => Encoding.UTF8.GetString(p)));
            outbox.Commit(batch, batch.Count);
        }
        return all;
    }

    [Fact]
    public void Readings_come_out_in_order_across_segments_and_a_reopen()
    {
        var options = new OutboxOptions { SegmentBytes = 4096, Sync = OutboxSync.Never };
        using (var outbox = new Outbox(_directory.Path, options))
        {
            for (var i = 1; i <= 1000; i++)
            {
                outbox.Append(Reading(i));
            }
            var batch = outbox.Peek(300);
            outbox.Commit(batch, 250); // Sent 250, the rest of the batch was not acknowledged.
            Assert.Equal(750, outbox.Count);
        }
        Assert.True(Directory.GetFiles(_directory.Path, "*.seg").Length > 1, "the test should span several segments");

        using var reopened = new Outbox(_directory.Path, options);
        Assert.Equal(750, reopened.Count);
        Assert.Equal(Enumerable.Range(251, 750).Select(i => Encoding.UTF8.GetString(Reading(i))), Drain(reopened));
        Assert.Single(Directory.GetFiles(_directory.Path, "*.seg")); // Sent segments are deleted.
    }

    [Fact]
    public void A_torn_record_at_the_end_is_cut_off_on_open()
    {
        using (var outbox = new Outbox(_directory.Path, new OutboxOptions { Sync = OutboxSync.Always }))
        {
            outbox.Append(Reading(1));
            outbox.Append(Reading(2));
        }
        // A power cut mid-write: a header promising 40 bytes and half of them.
        var segment = Directory.GetFiles(_directory.Path, "*.seg").Single();
        using (var file = new FileStream(segment, FileMode.Append))
        {
            file.Write([40, 0, 0, 0, 1, 2, 3, 4, (byte)'{', (byte)'"']);
        }
        using var reopened = new Outbox(_directory.Path);
        Assert.Equal(2, reopened.Count);
        reopened.Append(Reading(3));
        Assert.Equal(["{\"light\": 1, \"seq\": 1}", "{\"light\": 2, \"seq\": 2}", "{\"light\": 3, \"seq\": 3}"], Drain(reopened));
    }

    [Fact]
    public void A_full_outbox_drops_the_oldest_readings_and_counts_them()
    {
        using var outbox = new Outbox(_directory.Path, new OutboxOptions { MaxBytes = 64 * 1024, SegmentBytes = 4096, Sync = OutboxSync.Never });
        for (var i = 1; i <= 10_000; i++)
        {
            outbox.Append(Reading(i));
        }
        Assert.True(outbox.Dropped > 0);
        Assert.Equal(10_000, outbox.Dropped + outbox.Count);
        Assert.True(outbox.PendingBytes <= 64 * 1024);
        var kept = Drain(outbox);
        // What is kept is the newest, still in order and without holes.
        Assert.Equal(Enumerable.Range((int)outbox.Dropped + 1, kept.Count).Select(i => Encoding.UTF8.GetString(Reading(i))), kept);
    }

    [Fact]
    public void The_sequence_counter_never_reuses_a_number_after_a_crash()
    {
        var path = Path.Combine(_directory.Path, "telemetry.seq");
        var first = new SequenceCounter(path);
        var taken = Enumerable.Range(0, 1500).Select(_ => first.Next()).ToList();
        Assert.Equal(Enumerable.Range(1, 1500).Select(i => (long)i), taken);
        // No dispose, no flush: the process died. The next one starts after the reserved block.
        var second = new SequenceCounter(path);
        Assert.Equal(2001, second.Next());
    }
}
