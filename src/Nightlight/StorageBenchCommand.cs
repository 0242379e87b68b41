using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Nightlight.Server;
using Nightlight.Server.Storage;

namespace Nightlight.Cli;

/// <summary>
/// <c>nightlight storage-bench</c>: how fast the configured store takes readings in the server's batches, and how
/// fast a downsampled history query over them answers. Not a test: it prints figures for docs/benchmarks.md.
/// </summary>
static class StorageBenchCommand
{
    public static Command Create()
    {
        var readings = new Option<int?>("--readings") { Description = "Readings to write (default 1000000)" };
        var devices = new Option<int?>("--devices") { Description = "Devices they come from; the history query reads the first one's share (default 1)" };
        var batch = new Option<int?>("--batch") { Description = "Readings per transaction, as Storage:BatchSize (default 20000)" };
        var buckets = new Option<int?>("--buckets") { Description = "Buckets of the history query (default 500)" };
        var seconds = new Option<bool>("--seconds") { Description = "Buckets of whole seconds, not minutes: the query then reads every raw reading instead of the per-minute rollup" };
        var data = new Option<string?>("--data") { Description = "Directory for the SQLite file (default: a new temporary directory, deleted after)" };
        var database = new Option<string?>("--database") { Description = "PostgreSQL connection string: bench PostgreSQL instead of SQLite (use an empty database)" };
        var command = new Command("storage-bench", "Measure readings/s written to the store and a downsampled history query over them.")
        {
            readings, devices, batch, buckets, seconds, data, database,
        };
        // The descriptions say the defaults; a DefaultValueFactory would make help say each one a second time.
        command.SetAction((parse, ct) => RunAsync(parse.GetValue(readings) ?? 1_000_000, parse.GetValue(devices) ?? 1, parse.GetValue(batch) ?? 20_000,
            parse.GetValue(buckets) ?? 500,
            parse.GetValue(seconds), parse.GetValue(data), parse.GetValue(database), ct));
        return command;
    }

    static async Task<int> RunAsync(int count, int deviceCount, int batchSize, int bucketCount, bool rawBuckets, string? dataDir, string? database, CancellationToken ct)
    {
        var temporary = dataDir is null && database is null ? Directory.CreateTempSubdirectory("nightlight-storage-bench-").FullName : null;
        using var loggers = Hosts.CommandLoggers();
        await using var store = ServerExtensions.CreateStore(new StorageOptions { ConnectionString = database },
            new DataOptions { Directory = dataDir ?? temporary ?? "./nightlight-data" }, loggers);
        try
        {
            await store.InitializeAsync(ct);
            Console.WriteLine($"store          {store.Provider} {store.Location}");
            Console.WriteLine($"machine        {Environment.ProcessorCount} cores, {System.Runtime.InteropServices.RuntimeInformation.OSDescription}");

            // One reading a second per device, ending now: the shape of a week of one-second data, squeezed.
            var start = DateTimeOffset.UtcNow.AddSeconds(-count / Math.Max(1, deviceCount) - 1);
            var runId = Guid.NewGuid().ToString("N")[..6];
            var batchList = new List<StoredReading>(batchSize);
            var clock = Stopwatch.StartNew();
            for (var i = 0; i < count; i++)
            {
                var device = $"bench{runId}-{i % deviceCount}";
                var ts = start.AddSeconds(i / deviceCount);
                batchList.Add(new StoredReading(device, ts, ts, i / deviceCount, new Dictionary<string, double> { ["light"] = 200 + (i * 7919 % 600) }));
                if (batchList.Count == batchSize || i == count - 1)
                {
                    await store.WriteAsync(batchList, [], [], ct);
                    batchList.Clear();
                }
            }
            var writeSeconds = clock.Elapsed.TotalSeconds;
            Console.WriteLine($"write          {count:N0} readings in {writeSeconds:F1} s = {count / writeSeconds:N0} readings/s (batches of {batchSize:N0})");

            var first = $"bench{runId}-0";
            var end = start.AddSeconds(count / deviceCount + 1);
            // Whole minutes, as a chart asks for (1m, 5m, 30m): those buckets read the per-minute rollup.
            var bucket = TimeSpan.FromMinutes(Math.Ceiling((end - start).TotalMinutes / bucketCount));
            if (rawBuckets)
            {
                // Whole seconds that are not whole minutes, so no bucket can be read from the rollup.
                var wholeSeconds = Math.Ceiling((end - start).TotalSeconds / bucketCount);
                bucket = TimeSpan.FromSeconds(wholeSeconds % 60 == 0 ? wholeSeconds + 1 : wholeSeconds);
            }
            var times = new List<double>();
            IReadOnlyList<ReadingBucket> result = [];
            for (var run = 0; run < 7; run++)
            {
                clock.Restart();
                result = await store.BucketsAsync(first, start, end, bucket, ["light"], ct);
                times.Add(clock.Elapsed.TotalMilliseconds);
            }
            times.Sort();
            var rows = result.Sum(b => b.Count);
            Console.WriteLine($"history query  {rows:N0} readings into {result.Count} buckets of {(rawBuckets ? $"{bucket.TotalSeconds:F0} s" : $"{bucket.TotalMinutes:F0} min")}: median {times[times.Count / 2]:F0} ms, " +
                $"best {times[0]:F0} ms, worst {times[^1]:F0} ms (7 runs, first included)");
            return 0;
        }
        finally
        {
            await store.DisposeAsync();
            if (temporary is not null)
            {
                Directory.Delete(temporary, recursive: true);
            }
        }
    }
}
