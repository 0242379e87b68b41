using Nightlight.Server.Storage;
using Nightlight.Server.Storage.Postgres;
using Nightlight.Server.Storage.Sqlite;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>The same storage contract, run against a real SQLite file and a real PostgreSQL cluster.</summary>
public abstract class StorageContractTests
{
    protected abstract Task<ITelemetryStore> OpenStoreAsync();

    /// <summary>
    /// A database as a version before epochs left it, holding one reading of d1 with seq 7 (at <see cref="T0"/> + 1 s,
    /// light 100), opened by this version.
    /// </summary>
    protected abstract Task<ITelemetryStore> OpenStoreFromBeforeEpochsAsync();

    protected static readonly DateTimeOffset T0 = new(2026, 11, 1, 10, 0, 0, TimeSpan.Zero);

    static StoredReading Reading(string device, int second, double light, long? seq, long epoch) => Reading(device, second, light, seq) with { Epoch = epoch };

    static StoredReading Reading(string device, int second, double light, long? seq = null, double? temperature = null)
    {
        var measurements = new Dictionary<string, double> { ["light"] = light };
        if (temperature is { } t)
        {
            measurements["temperature"] = t;
        }
        return new StoredReading(device, T0.AddSeconds(second), T0.AddSeconds(second).AddMilliseconds(5), seq, measurements);
    }

    [Fact]
    public async Task A_reading_redelivered_with_the_same_seq_is_stored_once()
    {
        await using var store = await OpenStoreAsync();
        // QoS 1 redelivery: once inside the same batch, once in a later batch.
        var first = await store.WriteAsync([Reading("d1", 1, 100, seq: 7), Reading("d1", 1, 100, seq: 7), Reading("d1", 2, 110, seq: 8)], [], [], default);
        var second = await store.WriteAsync([Reading("d1", 1, 100, seq: 7), Reading("d2", 1, 100, seq: 7)], [], [], default);

        Assert.Equal(2, first);
        Assert.Equal(1, second);
        var readings = await store.ReadingsAsync("d1", T0, T0.AddMinutes(1), 100, default);
        Assert.Equal([7L, 8L], readings.Select(r => r.Seq!.Value));
    }

    [Fact]
    public async Task A_device_whose_numbering_restarted_in_a_new_epoch_is_stored_and_redeliveries_in_each_epoch_once()
    {
        await using var store = await OpenStoreAsync();
        // Regression: `nightlight fleet` run twice numbers from 1 again; every reading of the second run was a "duplicate".
        var first = await store.WriteAsync([Reading("d1", 1, 100, 1, epoch: 0), Reading("d1", 2, 110, 2, epoch: 0),
            Reading("d1", 3, 120, 1, epoch: 4242), Reading("d1", 3, 120, 1, epoch: 4242)], [], [], default);
        var second = await store.WriteAsync([Reading("d1", 4, 130, 2, epoch: 4242), Reading("d1", 4, 130, 2, epoch: 4242),
            Reading("d1", 1, 100, 1, epoch: 0), Reading("d1", 5, 140, 1, epoch: TelemetryParserMaxEpoch), Reading("d2", 5, 7, 1, epoch: 4242)], [], [], default);
        var third = await store.WriteAsync([Reading("d1", 3, 120, 1, epoch: 4242), Reading("d1", 2, 110, 2, epoch: 0)], [], [], default);

        Assert.Equal((3, 3, 0), (first, second, third));
        var readings = await store.ReadingsAsync("d1", T0, T0.AddMinutes(1), 100, default);
        Assert.Equal([(0L, 1L, 100.0), (0L, 2L, 110.0), (4242L, 1L, 120.0), (4242L, 2L, 130.0), (TelemetryParserMaxEpoch, 1L, 140.0)],
            readings.Select(r => (r.Epoch, r.Seq!.Value, r.Measurements["light"])));
        var buckets = await store.BucketsAsync("d1", T0, T0.AddMinutes(1), TimeSpan.FromMinutes(1), ["light"], default);
        Assert.Equal(5, Assert.Single(buckets).Count);
    }

    const long TelemetryParserMaxEpoch = Nightlight.Protocol.TelemetryParser.MaxEpoch;

    [Fact]
    public async Task A_database_from_before_epochs_keeps_its_readings_in_epoch_0_and_stores_a_new_epoch_s_readings()
    {
        await using var store = await OpenStoreFromBeforeEpochsAsync();

        var old = Assert.Single(await store.ReadingsAsync("d1", T0, T0.AddMinutes(1), 100, default));
        Assert.Equal((0L, 7L, 100.0), (old.Epoch, old.Seq!.Value, old.Measurements["light"]));
        // The device that sent it before the upgrade redelivers it (no epoch): still a copy. A new epoch is not.
        Assert.Equal(0, await store.WriteAsync([Reading("d1", 1, 100, 7, epoch: 0)], [], [], default));
        Assert.Equal(1, await store.WriteAsync([Reading("d1", 2, 200, 7, epoch: 99)], [], [], default));
        Assert.Equal([(0L, 7L), (99L, 7L)], (await store.ReadingsAsync("d1", T0, T0.AddMinutes(1), 100, default)).Select(r => (r.Epoch, r.Seq!.Value)));
    }

    [Fact]
    public async Task The_numbering_counts_the_seqs_missing_inside_each_epoch_and_not_copies_or_readings_without_seq()
    {
        await using var store = await OpenStoreAsync();
        await store.WriteAsync([Reading("d1", 1, 1, 1, epoch: 0), Reading("d1", 2, 1, 2, epoch: 0), Reading("d1", 4, 1, 4, epoch: 0),
            Reading("d1", 5, 1, 1, epoch: 99), Reading("d1", 6, 1, 2, epoch: 99), Reading("d1", 6, 1), Reading("d2", 1, 1, 9, epoch: 0)], [], [], default);
        await store.WriteAsync([Reading("d1", 4, 1, 4, epoch: 0), Reading("d1", 7, 1, 7, epoch: 0), Reading("d1", 8, 1, 3, epoch: 99)], [], [], default);

        var numbering = await store.NumberingAsync("d1", default);

        // Epoch 0 lost 3, 5 and 6; epoch 99 lost nothing; d2's reading and the one without seq are not d1's numbering.
        Assert.Equal([new EpochNumbering(0, 1, 7, 4), new EpochNumbering(99, 1, 3, 3)], numbering);
        Assert.Equal([3L, 0L], numbering.Select(e => e.Missing));
        Assert.Empty(await store.NumberingAsync("nobody", default));
    }

    [Fact]
    public async Task A_gap_filled_late_up_to_the_next_stored_seq_stores_each_seq_once_and_no_copy_after_it()
    {
        await using var store = await OpenStoreAsync();
        // 1-3 and 6-8 stored, then the gap 4-5 arrives late, then copies of 6 (the seq right after the filled gap),
        // of 2 (an older run) and of 8, then 9: only 4, 5 and 9 are new.
        await store.WriteAsync([.. new[] { 1, 2, 3, 6, 7, 8 }.Select(s => Reading("d1", s, s, seq: s))], [], [], default);
        var late = await store.WriteAsync([Reading("d1", 4, 4, seq: 4), Reading("d1", 5, 5, seq: 5), Reading("d1", 6, 6, seq: 6), Reading("d1", 2, 2, seq: 2)], [], [], default);
        var next = await store.WriteAsync([Reading("d1", 8, 8, seq: 8), Reading("d1", 9, 9, seq: 9), Reading("d1", 6, 6, seq: 6)], [], [], default);

        Assert.Equal((2, 1), (late, next));
        Assert.Equal(Enumerable.Range(1, 9).Select(s => (long)s), (await store.ReadingsAsync("d1", T0, T0.AddMinutes(1), 100, default)).Select(r => r.Seq!.Value));
        Assert.Equal([new EpochNumbering(0, 1, 9, 9)], await store.NumberingAsync("d1", default));
        Assert.Equal(0, await store.MissingAsync(default));
    }

    [Fact]
    public async Task Copies_sent_after_the_store_was_reopened_are_recognised_and_the_numbering_goes_on()
    {
        var store = await OpenStoreAsync();
        await store.WriteAsync([.. Enumerable.Range(1, 50).Where(s => s != 20).Select(s => Reading("d1", s, s, seq: s))], [], [], default);
        var reopened = await ReopenAsync(store);
        await using (reopened)
        {
            // A device resends its backlog after the server restarted: the copies, the lost 20, and new readings.
            var stored = await reopened.WriteAsync([.. Enumerable.Range(10, 51).Select(s => Reading("d1", s, s, seq: s))], [], [], default);

            Assert.Equal(11, stored);
            Assert.Equal(Enumerable.Range(1, 60).Select(s => (long)s),
                (await reopened.ReadingsAsync("d1", T0, T0.AddMinutes(2), 1000, default)).Select(r => r.Seq!.Value));
            Assert.Equal(0, await reopened.MissingAsync(default));
        }
    }

    /// <summary>The same database opened by a new store, as after a server restart; disposes <paramref name="store"/>.</summary>
    protected abstract Task<ITelemetryStore> ReopenAsync(ITelemetryStore store);

    [Fact]
    public async Task A_device_numbering_on_across_retention_stores_each_new_reading_once_and_loses_nothing()
    {
        await using var store = await OpenStoreAsync();
        await store.WriteAsync([.. Enumerable.Range(0, 10).Select(s => Reading("d1", s, s, seq: s))], [], [], default);
        await store.WriteAsync([.. Enumerable.Range(10, 10).Select(s => Reading("d1", s, s, seq: s))], [], [], default);

        Assert.Equal(5, await store.DeleteOlderThanAsync(T0.AddSeconds(5), default));
        var stored = await store.WriteAsync([Reading("d1", 19, 19, seq: 19), Reading("d1", 20, 20, seq: 20), Reading("d1", 21, 21, seq: 21)], [], [], default);

        Assert.Equal(2, stored);
        Assert.Equal(Enumerable.Range(5, 17).Select(s => (long)s), (await store.ReadingsAsync("d1", T0, T0.AddMinutes(1), 100, default)).Select(r => r.Seq!.Value));
        Assert.Equal(0, await store.MissingAsync(default));
    }

    [Fact]
    public async Task Readings_without_seq_are_all_kept_in_time_order_with_every_measurement()
    {
        await using var store = await OpenStoreAsync();
        await store.WriteAsync([Reading("d1", 3, 300), Reading("d1", 1, 100, temperature: 18.5), Reading("d1", 1, 100), Reading("other", 2, 5)], [], [], default);

        var readings = await store.ReadingsAsync("d1", T0, T0.AddMinutes(1), 100, default);

        Assert.Equal([100.0, 100.0, 300.0], readings.Select(r => r.Measurements["light"]));
        Assert.Equal(18.5, readings[0].Measurements["temperature"]);
        Assert.Equal(T0.AddSeconds(1).AddMilliseconds(5), readings[0].Arrived);
        Assert.Single(await store.ReadingsAsync("d1", T0.AddSeconds(2), T0.AddMinutes(1), 100, default));
        Assert.Equal(2, (await store.ReadingsAsync("d1", T0, T0.AddMinutes(1), 2, default)).Count);
    }

    [Fact]
    public async Task Buckets_give_min_avg_max_per_measurement_and_leave_empty_buckets_out()
    {
        await using var store = await OpenStoreAsync();
        await store.WriteAsync([Reading("d1", 0, 10, temperature: 20), Reading("d1", 5, 30, temperature: 22), Reading("d1", 9, 20, temperature: 21),
            Reading("d1", 31, 400)], [], [], default);

        var buckets = await store.BucketsAsync("d1", T0, T0.AddMinutes(1), TimeSpan.FromSeconds(10), ["light", "temperature"], default);

        Assert.Equal([T0, T0.AddSeconds(30)], buckets.Select(b => b.Start));
        Assert.Equal(3, buckets[0].Count);
        Assert.Equal(new BucketStats(10, 20, 30), buckets[0].Measurements["light"]);
        Assert.Equal(new BucketStats(20, 21, 22), buckets[0].Measurements["temperature"]);
        Assert.Equal(new BucketStats(400, 400, 400), buckets[1].Measurements["light"]);
        Assert.False(buckets[1].Measurements.ContainsKey("temperature"));
    }

    [Fact]
    public async Task Minute_buckets_from_the_rollup_agree_with_the_raw_readings_and_skip_redelivered_ones()
    {
        await using var store = await OpenStoreAsync();
        // Three minutes of readings; seq 2 arrives twice in a later batch and must not count twice.
        await store.WriteAsync([Reading("d1", 10, 100, seq: 1), Reading("d1", 70, 200, seq: 2), Reading("d1", 130, 600, seq: 3)], [], [], default);
        await store.WriteAsync([Reading("d1", 70, 200, seq: 2), Reading("d1", 100, 400, seq: 4)], [], [], default);

        // From 30 s in: the first minute is partial (raw readings), the next ones whole (rollup).
        var buckets = await store.BucketsAsync("d1", T0.AddSeconds(5), T0.AddMinutes(3), TimeSpan.FromMinutes(2), ["light"], default);

        Assert.Equal([T0, T0.AddMinutes(2)], buckets.Select(b => b.Start));
        Assert.Equal([3L, 1L], buckets.Select(b => b.Count));
        Assert.Equal(new BucketStats(100, 700.0 / 3, 400), buckets[0].Measurements["light"]);
        Assert.Equal(new BucketStats(600, 600, 600), buckets[1].Measurements["light"]);
    }

    [Fact]
    public async Task Minute_rollup_equals_the_raw_readings_over_repeats_in_a_batch_across_batches_and_readings_without_seq()
    {
        await using var store = await OpenStoreAsync();
        string[] devices = ["d1", "d2", "d3"];
        // Readings one second apart per device over about seven minutes; every fifth also has a temperature.
        StoredReading Seq(string device, int seq, double shift = 0) =>
            Reading(device, seq, 100 + (seq * 37 % 500) + shift, seq, seq % 5 == 0 ? 15 + seq % 7 + shift : null);
        List<StoredReading> Range(int from, int to) =>
            [.. Enumerable.Range(from, to - from + 1).SelectMany(seq => devices.Select(d => Seq(d, seq)))];

        // 1: a redelivery close behind its original, inside the same batch, with other values (the first one counts).
        var batch1 = Range(1, 100);
        batch1.InsertRange(50, devices.Select(d => Seq(d, 20, shift: 1000)));
        batch1.Add(Seq("d2", 100, shift: 1000));
        // 2: overlaps what batch 1 stored, and has readings without a seq, at the same times as stored ones.
        var batch2 = Range(91, 200);
        batch2.AddRange(Enumerable.Range(0, 10).Select(i => Reading("d1", 30 + i * 20, 7 + i)));
        // 3 and 4: new readings right after a batch of redeliveries; 5: batch 4 again, all of it stored.
        var batch3 = Range(201, 300);
        var batch4 = Range(301, 420);
        var batch5 = Range(301, 420);

        var inserted = new List<int>();
        foreach (var batch in (List<StoredReading>[])[batch1, batch2, batch3, batch4, batch5])
        {
            inserted.Add(await store.WriteAsync(batch, [], [], default));
        }

        Assert.Equal([300, 300 + 10, 300, 360, 0], inserted);
        // The model: every reading without a seq, and the first delivery of each (device, seq).
        var expected = new[] { batch1, batch2, batch3, batch4, batch5 }.SelectMany(b => b)
            .Where(r => r.Seq is null).Concat(new[] { batch1, batch2, batch3, batch4, batch5 }.SelectMany(b => b)
                .Where(r => r.Seq is not null).DistinctBy(r => (r.DeviceId, r.Seq))).ToList();
        foreach (var device in devices)
        {
            var raw = await store.ReadingsAsync(device, T0, T0.AddHours(1), 10_000, default);
            var model = expected.Where(r => r.DeviceId == device).ToList();
            Assert.Equal(model.Select(Key).Order(), raw.Select(Key).Order());
            await AssertRollupMatchesRawAsync(store, device, T0, T0.AddMinutes(10));
        }
        static string Key(StoredReading r) =>
            $"{r.Seq}@{r.Ts.ToUnixTimeMilliseconds()}:{string.Join(",", r.Measurements.OrderBy(m => m.Key).Select(m => $"{m.Key}={m.Value}"))}";
    }

    [Fact]
    public async Task Readings_stored_over_many_batches_and_sent_late_come_back_in_time_order_counted_and_bucketed()
    {
        await using var store = await OpenStoreAsync();
        // A device sending every half second for five minutes, in batches of 40, with a stretch it kept offline sent
        // later (at the times it took them), and another device's readings between.
        StoredReading At(string device, int halfSecond, double light) =>
            new(device, T0.AddMilliseconds(halfSecond * 500), T0.AddMilliseconds(halfSecond * 500 + 3), null, Measurements(light, halfSecond));
        static Nightlight.Protocol.Measurements Measurements(double light, int i) =>
            i % 3 == 0 ? new Dictionary<string, double> { ["light"] = light, ["temperature"] = 15 + i % 11 } : new Dictionary<string, double> { ["light"] = light };
        var live = Enumerable.Range(0, 600).Where(i => i is < 200 or >= 260).Select(i => At("d1", i, i % 1000)).ToList();
        var late = Enumerable.Range(200, 60).Select(i => At("d1", i, 2000 + i)).ToList();
        var sent = 0;
        foreach (var batch in live.Chunk(40))
        {
            await store.WriteAsync([.. batch, At("d2", sent, 1)], [], [], default);
            if (++sent == 10)
            {
                await store.WriteAsync(late, [], [], default);
            }
        }

        var all = await store.ReadingsAsync("d1", T0, T0.AddHours(1), 10_000, default);
        Assert.Equal(Enumerable.Range(0, 600).Select(i => T0.AddMilliseconds(i * 500)), all.Select(r => r.Ts));
        Assert.Equal(2000 + 230, all[230].Measurements["light"]);
        Assert.Equal(T0.AddMilliseconds(230 * 500 + 3), all[230].Arrived);
        Assert.Equal(15 + 231 % 11, all[231].Measurements["temperature"]);
        Assert.Equal(Enumerable.Range(190, 20).Select(i => T0.AddMilliseconds(i * 500)),
            (await store.ReadingsAsync("d1", T0.AddSeconds(95), T0.AddHours(1), 20, default)).Select(r => r.Ts));
        Assert.Equal(20, await store.CountReadingsAsync("d1", T0.AddSeconds(95), T0.AddSeconds(105), default));
        Assert.Equal(600, await store.CountReadingsAsync("d1", T0, T0.AddHours(1), default));
        Assert.Equal(sent, await store.CountReadingsAsync("d2", T0, T0.AddHours(1), default));

        var buckets = await store.BucketsAsync("d1", T0.AddSeconds(7), T0.AddSeconds(250), TimeSpan.FromSeconds(10), ["light", "temperature"], default);
        var expected = all.Where(r => r.Ts >= T0.AddSeconds(7) && r.Ts < T0.AddSeconds(250)).GroupBy(r => (long)(r.Ts - T0).TotalSeconds / 10).ToList();
        Assert.Equal(expected.Select(g => T0.AddSeconds(g.Key * 10)), buckets.Select(b => b.Start));
        Assert.Equal(expected.Select(g => (long)g.Count()), buckets.Select(b => b.Count));
        Assert.Equal(expected.Select(g => g.Max(r => r.Measurements["light"])), buckets.Select(b => b.Measurements["light"].Max));
        Assert.Equal(expected.Select(g => g.Where(r => r.Measurements.ContainsKey("temperature")).Min(r => r.Measurements["temperature"])),
            buckets.Select(b => b.Measurements["temperature"].Min));
        await AssertRollupMatchesRawAsync(store, "d1", T0, T0.AddMinutes(6));
    }

    [Fact]
    public async Task Retention_inside_a_device_s_latest_readings_keeps_what_is_newer_and_the_readings_after_it()
    {
        await using var store = await OpenStoreAsync();
        await store.WriteAsync([.. Enumerable.Range(0, 30).Select(i => Reading("d1", i, i, seq: i))], [], [], default);

        Assert.Equal(15, await store.DeleteOlderThanAsync(T0.AddSeconds(15), default));
        // The same device goes on: nothing deleted comes back, and a redelivery of a deleted reading is not stored.
        await store.WriteAsync([.. Enumerable.Range(30, 5).Select(i => Reading("d1", i, i, seq: i))], [], [], default);
        await store.WriteAsync([Reading("d1", 35, 35, seq: 35)], [], [], default);

        var readings = await store.ReadingsAsync("d1", T0, T0.AddMinutes(1), 100, default);
        Assert.Equal(Enumerable.Range(15, 21).Select(i => (double)i), readings.Select(r => r.Measurements["light"]));
        Assert.Equal(0, await store.DeleteOlderThanAsync(T0.AddSeconds(15), default));
    }

    /// <summary>
    /// Whole-minute buckets (read from the per-minute rollup) against the same buckets summed up here from the raw
    /// readings: the same counts, minimums, averages and maximums for every measurement.
    /// </summary>
    protected static async Task AssertRollupMatchesRawAsync(ITelemetryStore store, string device, DateTimeOffset from, DateTimeOffset to)
    {
        var raw = await store.ReadingsAsync(device, from, to, 1_000_000, default);
        var names = raw.SelectMany(r => r.Measurements.Keys).Distinct().ToList();
        var expected = raw.GroupBy(r => r.Ts.ToUnixTimeMilliseconds() / 60_000).OrderBy(g => g.Key).ToList();

        var buckets = await store.BucketsAsync(device, from, to, TimeSpan.FromMinutes(1), names, default);

        Assert.Equal(expected.Select(g => DateTimeOffset.FromUnixTimeMilliseconds(g.Key * 60_000)), buckets.Select(b => b.Start));
        Assert.Equal(expected.Select(g => (long)g.Count()), buckets.Select(b => b.Count));
        foreach (var (group, bucket) in expected.Zip(buckets))
        {
            foreach (var name in names)
            {
                var values = group.Where(r => r.Measurements.ContainsKey(name)).Select(r => r.Measurements[name]).ToList();
                if (values.Count == 0)
                {
                    Assert.False(bucket.Measurements.ContainsKey(name), $"{device} {bucket.Start:t}: {name} has no readings");
                    continue;
                }
                var stats = bucket.Measurements[name];
                Assert.Equal(values.Min(), stats.Min);
                Assert.Equal(values.Max(), stats.Max);
                Assert.Equal(values.Average(), stats.Avg, 9);
            }
        }
    }

    [Fact]
    public async Task Commands_are_updated_by_id_and_listed_newest_first()
    {
        await using var store = await OpenStoreAsync();
        var older = new CommandRecord("a1", "d1", true, "rule", CommandStatus.Sent, T0, T0, T0.AddSeconds(30));
        var newer = new CommandRecord("b2", "d1", false, "manual", CommandStatus.Sent, T0.AddSeconds(5), T0.AddSeconds(5), null);
        await store.WriteAsync([], [older, newer], [], default);
        await store.WriteAsync([], [older with { Status = CommandStatus.Acknowledged, Updated = T0.AddSeconds(1) }], [], default);

        var commands = await store.CommandsAsync("d1", 10, default);

        Assert.Equal(["b2", "a1"], commands.Select(c => c.Id));
        Assert.Equal(CommandStatus.Acknowledged, commands[1].Status);
        Assert.Equal(T0.AddSeconds(30), commands[1].Expires);
        Assert.Null(commands[0].Expires);
        Assert.False(commands[0].LedOn);
        Assert.Equal("led_on", commands[1].Switch);
    }

    [Fact]
    public async Task A_thermostat_command_keeps_its_switch()
    {
        await using var store = await OpenStoreAsync();
        var heating = new CommandRecord("h1", "thermo1", true, "rule", CommandStatus.Sent, T0, T0, T0.AddSeconds(30)) { Switch = "heating_on" };
        await store.WriteAsync([], [heating], [], default);
        await store.WriteAsync([], [heating with { Status = CommandStatus.Acknowledged, Updated = T0.AddSeconds(1) }], [], default);

        var stored = Assert.Single(await store.CommandsAsync("thermo1", 10, default));
        Assert.Equal("heating_on", stored.Switch);
        Assert.True(stored.LedOn);
        Assert.Equal(CommandStatus.Acknowledged, stored.Status);
    }

    [Fact]
    public async Task Devices_keep_their_first_seen_time_and_their_latest_state()
    {
        await using var store = await OpenStoreAsync();
        var last = Reading("d1", 9, 250, seq: 3, temperature: 19);
        await store.WriteAsync([], [], [new DeviceRecord("d1", T0, T0, null, null, null)], default);
        await store.WriteAsync([], [], [new DeviceRecord("d1", T0.AddHours(1), T0.AddSeconds(9), true, last, true)], default);

        var device = Assert.Single(await store.DevicesAsync(default));

        Assert.Equal(T0, device.FirstSeen);
        Assert.Equal(T0.AddSeconds(9), device.LastSeen);
        Assert.True(device.Online);
        Assert.True(device.LedOn);
        Assert.Equal(3, device.LastReading!.Seq);
        Assert.Equal(19, device.LastReading.Measurements["temperature"]);
    }

    [Fact]
    public async Task Many_devices_in_one_batch_each_keep_their_own_state_whatever_is_missing()
    {
        await using var store = await OpenStoreAsync();
        // Written in one batch, not in id order: one never sent a reading, one sent no seq, one went offline.
        var quiet = new DeviceRecord("quiet", T0, T0, true, null, null);
        var noSeq = new DeviceRecord("b-noseq", T0, T0.AddSeconds(2), null, Reading("b-noseq", 2, 50), false);
        var gone = new DeviceRecord("a-gone", T0, T0.AddSeconds(3), false, Reading("a-gone", 3, 700, seq: 12, temperature: 4.5), true);
        await store.WriteAsync([], [], [quiet, noSeq, gone], default);
        await store.WriteAsync([], [], [gone with { LastSeen = T0.AddSeconds(9), Online = true, LedOn = false }, quiet with { FirstSeen = T0.AddHours(1) }], default);

        var devices = await store.DevicesAsync(default);

        Assert.Equal(["a-gone", "b-noseq", "quiet"], devices.Select(d => d.Id));
        var (a, b, q) = (devices[0], devices[1], devices[2]);
        Assert.Equal((T0, T0.AddSeconds(9), (bool?)true, (bool?)false), (a.FirstSeen, a.LastSeen, a.Online, a.LedOn));
        Assert.Equal(12, a.LastReading!.Seq);
        Assert.Equal(4.5, a.LastReading.Measurements["temperature"]);
        Assert.Equal((T0.AddSeconds(2), (bool?)null, (bool?)false), (b.LastSeen, b.Online, b.LedOn));
        Assert.Null(b.LastReading!.Seq);
        Assert.Equal(50, b.LastReading.Measurements["light"]);
        Assert.Equal((T0, (bool?)true, (bool?)null), (q.FirstSeen, q.Online, q.LedOn));
        Assert.Null(q.LastReading);
    }

    [Fact]
    public async Task Retention_deletes_only_readings_older_than_the_cutoff()
    {
        await using var store = await OpenStoreAsync();
        await store.WriteAsync([Reading("d1", 0, 1), Reading("d1", 10, 2), Reading("d1", 20, 3)], [], [], default);

        var deleted = await store.DeleteOlderThanAsync(T0.AddSeconds(15), default);

        Assert.Equal(2, deleted);
        Assert.Equal([3.0], (await store.ReadingsAsync("d1", T0, T0.AddMinutes(1), 100, default)).Select(r => r.Measurements["light"]));
    }
}

public sealed class SqliteStorageTests : StorageContractTests, IDisposable
{
    readonly TempDirectory _directory = new("sqlite");

    protected override async Task<ITelemetryStore> OpenStoreAsync()
    {
        var store = new SqliteTelemetryStore(Path.Combine(_directory.Path, $"{Guid.NewGuid():N}.db"));
        await store.InitializeAsync(default);
        return store;
    }

    protected override async Task<ITelemetryStore> ReopenAsync(ITelemetryStore store)
    {
        var path = store.Location;
        await store.DisposeAsync();
        var reopened = new SqliteTelemetryStore(path);
        await reopened.InitializeAsync(default);
        return reopened;
    }

    [Fact]
    public async Task A_database_with_a_row_per_stored_seq_keeps_its_numbering_and_still_stores_a_redelivery_once()
    {
        var path = Path.Combine(_directory.Path, $"{Guid.NewGuid():N}.db");
        await using (var store = new SqliteTelemetryStore(path))
        {
            await store.InitializeAsync(default);
        }
        Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();
        // The table of earlier versions, a row per stored seq: d1 epoch 0 holds 1-3 and 6, epoch 5 holds 2; d2 holds 4.
        await using (var old = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={path}"))
        {
            await old.OpenAsync();
            await using var create = old.CreateCommand();
            create.CommandText = """
                DROP TABLE seq_runs;
                CREATE TABLE reading_seqs (device_id TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL, ts INTEGER NOT NULL,
                    PRIMARY KEY (device_id, epoch, seq)) WITHOUT ROWID;
                INSERT INTO reading_seqs VALUES ('d1', 0, 1, 1000), ('d1', 0, 2, 2000), ('d1', 0, 3, 3000), ('d1', 0, 6, 6000),
                    ('d1', 5, 2, 7000), ('d2', 0, 4, 1000);
                """;
            await create.ExecuteNonQueryAsync();
        }
        await using var upgraded = new SqliteTelemetryStore(path);
        await upgraded.InitializeAsync(default);

        Assert.Equal([new EpochNumbering(0, 1, 6, 4), new EpochNumbering(5, 2, 2, 1)], await upgraded.NumberingAsync("d1", default));
        Assert.Equal(2, await upgraded.MissingAsync(default));
        var at = DateTimeOffset.FromUnixTimeMilliseconds(8000);
        var stored = await upgraded.WriteAsync([.. new[] { 3L, 4L, 6L, 7L }.Select(s => new StoredReading("d1", at, at, s, new Dictionary<string, double> { ["light"] = 1 }))],
            [], [], default);
        Assert.Equal(2, stored);
        Assert.Equal(1, await upgraded.MissingAsync(default));
    }

    protected override async Task<ITelemetryStore> OpenStoreFromBeforeEpochsAsync()
    {
        var path = Path.Combine(_directory.Path, $"{Guid.NewGuid():N}.db");
        // Blocks as before epochs (a block without epochs is written the same way), and seqs unique per device.
        var block = new ReadingBlock();
        var ts = T0.AddSeconds(1).ToUnixTimeMilliseconds();
        block.Add(ts, ts, 7, 0, new Dictionary<string, double> { ["light"] = 100 });
        await using (var old = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={path}"))
        {
            await old.OpenAsync();
            await using var create = old.CreateCommand();
            create.CommandText = $$"""
                CREATE TABLE reading_blocks (device_id TEXT NOT NULL, first_ts INTEGER NOT NULL, last_ts INTEGER NOT NULL, n INTEGER NOT NULL, data BLOB NOT NULL);
                CREATE TABLE reading_seqs (device_id TEXT NOT NULL, seq INTEGER NOT NULL, ts INTEGER NOT NULL, PRIMARY KEY (device_id, seq)) WITHOUT ROWID;
                INSERT INTO reading_seqs VALUES ('d1', 7, {{ts}});
                INSERT INTO reading_blocks VALUES ('d1', {{ts}}, {{ts}}, 1, @data);
                """;
            create.Parameters.AddWithValue("@data", block.Data.ToArray());
            await create.ExecuteNonQueryAsync();
        }
        var store = new SqliteTelemetryStore(path);
        await store.InitializeAsync(default);
        return store;
    }

    [Fact]
    public async Task A_database_from_before_switches_reads_its_commands_as_led_on_and_stores_a_heating_command()
    {
        var path = Path.Combine(_directory.Path, $"{Guid.NewGuid():N}.db");
        await using (var old = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={path}"))
        {
            await old.OpenAsync();
            await using var create = old.CreateCommand();
            create.CommandText = """
                CREATE TABLE commands (id TEXT PRIMARY KEY, device_id TEXT NOT NULL, led_on INTEGER NOT NULL, source TEXT NOT NULL, status TEXT NOT NULL,
                    created INTEGER NOT NULL, updated INTEGER NOT NULL, expires INTEGER NULL);
                INSERT INTO commands VALUES ('old1', 'd1', 1, 'rule', 'acknowledged', 1000, 1000, NULL);
                """;
            await create.ExecuteNonQueryAsync();
        }
        await using var store = new SqliteTelemetryStore(path);
        await store.InitializeAsync(default);
        var kept = Assert.Single(await store.CommandsAsync("d1", 10, default));
        Assert.Equal(("old1", "led_on", true), (kept.Id, kept.Switch, kept.LedOn));

        await store.WriteAsync([], [new CommandRecord("h1", "d1", false, "manual", CommandStatus.Sent, T0, T0, null) { Switch = "heating_on" }], [], default);
        Assert.Equal(["heating_on", "led_on"], (await store.CommandsAsync("d1", 10, default)).Select(c => c.Switch));
    }

    [Fact]
    public async Task The_file_survives_a_restart()
    {
        var path = Path.Combine(_directory.Path, "restart.db");
        await using (var store = new SqliteTelemetryStore(path))
        {
            await store.InitializeAsync(default);
            await store.WriteAsync([new StoredReading("d1", DateTimeOffset.UtcNow, DateTimeOffset.UtcNow, 1, new Dictionary<string, double> { ["light"] = 5 })], [], [], default);
        }
        await using var reopened = new SqliteTelemetryStore(path);
        await reopened.InitializeAsync(default);
        Assert.Single(await reopened.ReadingsAsync("d1", DateTimeOffset.UtcNow.AddMinutes(-1), DateTimeOffset.UtcNow.AddMinutes(1), 10, default));
    }

    [Theory]
    [InlineData("CREATE UNIQUE INDEX readings_device_seq ON readings (device_id, seq)")]
    [InlineData("CREATE UNIQUE INDEX readings_device_seq_given ON readings (device_id, seq) WHERE seq IS NOT NULL; CREATE INDEX readings_device_ts ON readings (device_id, ts, light)")]
    public async Task A_database_from_before_blocks_keeps_every_reading_and_still_stores_a_redelivery_once(string indexes)
    {
        var path = Path.Combine(_directory.Path, "before.db");
        // The readings table as earlier versions made it: a row per reading.
        await using (var old = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={path}"))
        {
            await old.OpenAsync();
            await using var create = old.CreateCommand();
            create.CommandText = $$"""
                CREATE TABLE readings (device_id TEXT NOT NULL, ts INTEGER NOT NULL, arrived INTEGER NOT NULL, seq INTEGER NULL,
                    light REAL NULL, measurements TEXT NOT NULL);
                {{indexes}};
                INSERT INTO readings VALUES ('d1', 2000, 2100, NULL, 120, '{"light":120,"temperature":18.5}');
                INSERT INTO readings VALUES ('d1', 1000, 1000, 7, 100, '{"light":100}');
                INSERT INTO readings VALUES ('d2', 1500, 1600, 1, 9, '{"light":9}');
                """;
            await create.ExecuteNonQueryAsync();
        }
        var now = DateTimeOffset.FromUnixTimeMilliseconds(1000);
        await using var store = new SqliteTelemetryStore(path);
        await store.InitializeAsync(default);

        var d1 = await store.ReadingsAsync("d1", now.AddMinutes(-1), now.AddMinutes(1), 10, default);
        Assert.Equal([(1000L, 1000L, (long?)7, "light=100"), (2000L, 2100L, null, "light=120,temperature=18.5")],
            d1.Select(r => (r.Ts.ToUnixTimeMilliseconds(), r.Arrived.ToUnixTimeMilliseconds(), r.Seq, string.Join(",", r.Measurements.Select(m => $"{m.Key}={m.Value}")))));
        Assert.Equal([1L], (await store.ReadingsAsync("d2", now.AddMinutes(-1), now.AddMinutes(1), 10, default)).Select(r => r.Seq!.Value));

        var stored = await store.WriteAsync([
            new StoredReading("d1", now, now, 7, new Dictionary<string, double> { ["light"] = 100 }),
            new StoredReading("d1", now.AddSeconds(1), now.AddSeconds(1), null, new Dictionary<string, double> { ["light"] = 120 }),
            new StoredReading("d1", now.AddSeconds(1), now.AddSeconds(1), null, new Dictionary<string, double> { ["light"] = 120 })], [], [], default);

        // The redelivered seq 7 is skipped; the two readings without a seq are both kept.
        Assert.Equal(2, stored);
        Assert.Equal(4, (await store.ReadingsAsync("d1", now.AddMinutes(-1), now.AddMinutes(1), 10, default)).Count);
        await using var check = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={path}");
        await check.OpenAsync();
        await using var tables = check.CreateCommand();
        tables.CommandText = "SELECT COUNT(*) FROM sqlite_master WHERE name = 'readings'";
        Assert.Equal(0L, await tables.ExecuteScalarAsync());
    }

    public void Dispose()
    {
        Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();
        _directory.Dispose();
    }
}

/// <summary>One throwaway PostgreSQL cluster for the class; each test gets its own database.</summary>
public sealed class PostgresFixture : IAsyncLifetime
{
    public PostgresServer? Server { get; private set; }

    public async ValueTask InitializeAsync()
    {
        if (External.Find("initdb") is not null)
        {
            Server = await PostgresServer.StartAsync();
        }
    }

    /// <summary>The cluster, or a skip (a failure in CI) when PostgreSQL is not installed.</summary>
    public PostgresServer Require()
    {
        External.Require("initdb", "postgresql");
        return Server!;
    }

    public async ValueTask DisposeAsync()
    {
        if (Server is not null)
        {
            await Server.DisposeAsync();
        }
    }
}

[Trait("Speed", "Slow")]
public sealed class PostgresStorageTests(PostgresFixture postgres) : StorageContractTests, IClassFixture<PostgresFixture>
{
    string? _database;

    protected override async Task<ITelemetryStore> OpenStoreAsync()
    {
        _database = await postgres.Require().CreateDatabaseAsync();
        var store = new PostgresTelemetryStore(_database);
        await store.InitializeAsync(default);
        return store;
    }

    protected override async Task<ITelemetryStore> ReopenAsync(ITelemetryStore store)
    {
        await store.DisposeAsync();
        var reopened = new PostgresTelemetryStore(_database!);
        await reopened.InitializeAsync(default);
        return reopened;
    }

    protected override async Task<ITelemetryStore> OpenStoreFromBeforeEpochsAsync()
    {
        var database = await postgres.Require().CreateDatabaseAsync();
        await using (var old = Npgsql.NpgsqlDataSource.Create(database))
        {
            // The readings table and its index as versions before epochs made them.
            var ts = T0.AddSeconds(1).ToUnixTimeMilliseconds();
            await using var create = old.CreateCommand($$"""
                CREATE TABLE readings (device_id text NOT NULL, ts bigint NOT NULL, arrived bigint NOT NULL, seq bigint NULL,
                    light double precision NULL, measurements jsonb NOT NULL);
                CREATE UNIQUE INDEX readings_device_seq_given ON readings (device_id, seq) WHERE seq IS NOT NULL;
                INSERT INTO readings VALUES ('d1', {{ts}}, {{ts}}, 7, 100, '{"light":100}');
                """);
            await create.ExecuteNonQueryAsync();
        }
        var store = new PostgresTelemetryStore(database);
        await store.InitializeAsync(default);
        return store;
    }

    [Fact]
    public async Task Servers_starting_together_on_an_empty_database_all_create_the_schema()
    {
        // Seen in RabbitClusterTests: two servers started at once, one died on "duplicate key value violates unique
        // constraint pg_type_typname_nsp_index" from CREATE TABLE IF NOT EXISTS.
        for (var attempt = 0; attempt < 4; attempt++)
        {
            var database = await postgres.Require().CreateDatabaseAsync();
            var stores = Enumerable.Range(0, 3).Select(_ => new PostgresTelemetryStore(database)).ToList();
            try
            {
                await Task.WhenAll(stores.Select(s => Task.Run(() => s.InitializeAsync(default))));
                Assert.Equal(1, await stores[0].WriteAsync([new StoredReading("d1", DateTimeOffset.UtcNow, DateTimeOffset.UtcNow, 1,
                    new Dictionary<string, double> { ["light"] = 1 })], [], [], default));
            }
            finally
            {
                foreach (var store in stores)
                {
                    await store.DisposeAsync();
                }
            }
        }
    }

    [Fact]
    public async Task Two_servers_sharing_a_database_store_readings_both_write_at_once_exactly_once()
    {
        // Two stores with their own connection pools, as two server processes have: after a server loses its broker
        // connection, the other is handed readings the first may be storing at that very moment.
        var database = await postgres.Require().CreateDatabaseAsync();
        await using var first = new PostgresTelemetryStore(database);
        await using var second = new PostgresTelemetryStore(database);
        await first.InitializeAsync(default);
        await second.InitializeAsync(default);
        var t0 = new DateTimeOffset(2026, 11, 1, 10, 0, 0, TimeSpan.Zero);
        string[] devices = ["a", "b", "c", "d"];
        List<StoredReading> Range(int from, int count) =>
            [.. Enumerable.Range(from, count).SelectMany(seq => devices.Select(d =>
                new StoredReading(d, t0.AddSeconds(seq), t0.AddSeconds(seq), seq, new Dictionary<string, double> { ["light"] = seq % 1000 })))];

        var inserted = 0;
        for (var round = 0; round < 12; round++)
        {
            // Each round overlaps the last one and the other store's batch, which comes in the opposite order.
            var batch = Range(round * 200, 300);
            var results = await Task.WhenAll(
                Task.Run(() => first.WriteAsync(batch, [], [], default)),
                Task.Run(() => second.WriteAsync(Enumerable.Reverse(batch).ToList(), [], [], default)));
            inserted += results.Sum();
        }

        var distinct = 11 * 200 + 300;
        Assert.Equal(distinct * devices.Length, inserted);
        foreach (var device in devices)
        {
            var raw = await first.ReadingsAsync(device, t0, t0.AddHours(2), 100_000, default);
            Assert.Equal(Enumerable.Range(0, distinct).Select(s => (long)s), raw.Select(r => r.Seq!.Value));
            await AssertRollupMatchesRawAsync(first, device, t0, t0.AddHours(1));
        }
    }
}
