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
    public void A_damaged_record_in_the_middle_loses_only_that_reading()
    {
        var options = new OutboxOptions { Sync = OutboxSync.Never };
        using (var outbox = new Outbox(_directory.Path, options))
        {
            for (var i = 1; i <= 122; i++)
            {
                outbox.Append(Reading(i));
            }
            var sent = outbox.Peek(5);
            outbox.Commit(sent, 5); // Readings 1-5 went out before the damage.
        }
        // One flipped byte inside the payload of reading 20.
        var segment = Directory.GetFiles(_directory.Path, "*.seg").Single();
        var bytes = File.ReadAllBytes(segment);
        var record20 = RecordOffset(bytes, 20);
        bytes[record20 + 8 + 3] ^= 0x10;
        File.WriteAllBytes(segment, bytes);

        using var reopened = new Outbox(_directory.Path, options);
        Assert.Equal(1, reopened.Damaged);
        Assert.Equal(116, reopened.Count);
        var expected = Enumerable.Range(6, 117).Where(i => i != 20).Select(i => Encoding.UTF8.GetString(Reading(i)));
        Assert.Equal(expected, Drain(reopened));
    }

    [Fact]
    public void A_damaged_length_before_the_cursor_keeps_the_cursor_on_its_reading()
    {
        var options = new OutboxOptions { Sync = OutboxSync.Never };
        using (var outbox = new Outbox(_directory.Path, options))
        {
            for (var i = 1; i <= 50; i++)
            {
                outbox.Append(Reading(i));
            }
            outbox.Commit(outbox.Peek(30), 30);
        }
        // The length of reading 10 (already sent) says 60,000 bytes: its header can no longer be trusted.
        var segment = Directory.GetFiles(_directory.Path, "*.seg").Single();
        var bytes = File.ReadAllBytes(segment);
        BitConverter.TryWriteBytes(bytes.AsSpan(RecordOffset(bytes, 10)), 60_000);
        File.WriteAllBytes(segment, bytes);

        using var reopened = new Outbox(_directory.Path, options);
        Assert.Equal(Enumerable.Range(31, 20).Select(i => Encoding.UTF8.GetString(Reading(i))), Drain(reopened));
    }

    /// <summary>Where the record of reading <paramref name="n"/> (1-based) starts in a segment of intact records.</summary>
    static int RecordOffset(byte[] segment, int n)
    {
        var offset = 0;
        for (var i = 1; i < n; i++)
        {
            offset += 8 + BitConverter.ToInt32(segment, offset);
        }
        return offset;
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
    public void The_sequence_counter_goes_on_without_a_gap_after_kill_9()
    {
        var path = Path.Combine(_directory.Path, "telemetry.seq");
        var first = new SequenceCounter(path);
        var taken = Enumerable.Range(0, 1500).Select(_ => first.Next()).ToList();
        Assert.Equal(Enumerable.Range(1, 1500).Select(i => (long)i), taken);
        // No dispose, no flush: the process died, its page cache did not. The next one goes on where it stopped.
        using var second = new SequenceCounter(path);
        Assert.Equal(1501, second.Next());
        first.Dispose();
    }

    [Fact]
    public void The_sequence_counter_never_reuses_a_number_after_a_power_cut()
    {
        var path = Path.Combine(_directory.Path, "telemetry.seq");
        using (var first = new SequenceCounter(path))
        {
            for (var i = 0; i < 1500; i++)
            {
                first.Next();
            }
        }
        // A power cut loses the unflushed next number (here: a garbled copy of it); the flushed block end is kept.
        File.WriteAllBytes(path + ".next", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        using var second = new SequenceCounter(path);
        Assert.Equal(2001, second.Next());
    }

    [Fact]
    public void The_sequence_counter_keeps_its_epoch_across_restarts_and_takes_a_new_one_when_numbering_starts_again()
    {
        var path = Path.Combine(_directory.Path, "telemetry.seq");
        long epoch;
        using (var first = new SequenceCounter(path))
        {
            epoch = first.Epoch;
            Assert.InRange(epoch, 1, Protocol.TelemetryParser.MaxEpoch);
            first.Next();
            first.Next();
        }
        using (var second = new SequenceCounter(path))
        {
            Assert.Equal((epoch, 3L), (second.Epoch, second.Next()));
        }
        // A garbled counter starts again at 1: in a new epoch, so the server keeps the new readings apart from the old.
        File.WriteAllText(path, "garbage");
        using (var third = new SequenceCounter(path))
        {
            Assert.Equal(1, third.Next());
            Assert.NotEqual(epoch, third.Epoch);
            epoch = third.Epoch;
        }
        // So does a garbled epoch file, and a lost counter whose epoch file stayed.
        File.WriteAllText(Path.Combine(_directory.Path, "telemetry.epoch"), "-5x");
        using (var fourth = new SequenceCounter(path))
        {
            Assert.Equal(1, fourth.Next());
            Assert.NotEqual(epoch, fourth.Epoch);
            epoch = fourth.Epoch;
        }
        File.Delete(path);
        File.Delete(path + ".next");
        using var fifth = new SequenceCounter(path);
        Assert.Equal(1, fifth.Next());
        Assert.NotEqual(epoch, fifth.Epoch);
    }

    [Fact]
    public void A_sequence_counter_from_before_epochs_goes_on_numbering_in_epoch_0()
    {
        var path = Path.Combine(_directory.Path, "telemetry.seq");
        using (var first = new SequenceCounter(path))
        {
            first.Next();
        }
        File.Delete(Path.Combine(_directory.Path, "telemetry.epoch"));
        using var second = new SequenceCounter(path);
        Assert.Equal((0L, 2L), (second.Epoch, second.Next()));
    }
}
