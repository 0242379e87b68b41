using System.Buffers.Binary;
using System.Globalization;
using System.Net.Http.Json;
using System.Text.Json;

namespace Nightlight.Tests.Support;

/// <summary>What a fault did to the readings: taken by the devices, stored, lost, stored more than once.</summary>
public sealed record Tally(string Fault, long Sent, long Stored, long Lost, long Duplicates)
{
    /// <summary>The row of the chaos table: fault | readings sent | stored | lost | duplicates.</summary>
    public override string ToString() => $"| {Fault} | {Sent:N0} | {Stored:N0} | {Lost:N0} | {Duplicates:N0} |";
}

/// <summary>
/// The ground truth of "every reading stored exactly once": the readings each device numbered, read from its own files
/// after it stopped, against the readings the store holds, read through the history API.
/// </summary>
public static class ReadingLedger
{
    /// <summary>
    /// The readings a device took, from its data directory: its epoch (<c>telemetry.epoch</c>) and seqs 1 to N, where N + 1
    /// is the next number it would take (<c>telemetry.seq.next</c>: 8 bytes little-endian and a CRC, written at each take).
    /// </summary>
    public static (long Epoch, long Taken) Taken(string deviceDirectory)
    {
        var epoch = long.Parse(File.ReadAllText(Path.Combine(deviceDirectory, "telemetry.epoch")).Trim(), CultureInfo.InvariantCulture);
        var next = BinaryPrimitives.ReadInt64LittleEndian(File.ReadAllBytes(Path.Combine(deviceDirectory, "telemetry.seq.next")));
        return (epoch, next - 1);
    }

    /// <summary>Every (epoch, seq) the devices under <paramref name="dataDirectory"/>/devices took, by device id.</summary>
    public static Dictionary<string, List<(long Epoch, long Seq)>> TakenUnder(string dataDirectory, IEnumerable<string> ids) =>
        ids.ToDictionary(id => id, id =>
        {
            var (epoch, taken) = Taken(Path.Combine(dataDirectory, "devices", id));
            return Enumerable.Range(1, (int)taken).Select(seq => (epoch, (long)seq)).ToList();
        });

    /// <summary>The (epoch, seq) of each stored reading of a device, copies included, as <c>GET /api/devices/{id}/readings</c> lists them.</summary>
    public static async Task<List<(long Epoch, long Seq)>> StoredAsync(HttpClient http, string id)
    {
        var response = await http.GetAsync($"/api/devices/{id}/readings?limit=100000");
        if (!response.IsSuccessStatusCode)
        {
            return [];
        }
        return
        [
            .. (await response.Content.ReadFromJsonAsync<JsonElement>()).EnumerateArray().Where(r => r.TryGetProperty("seq", out _))
                .Select(r => (r.TryGetProperty("epoch", out var e) ? e.GetInt64() : 0, r.GetProperty("seq").GetInt64())),
        ];
    }

    /// <summary>
    /// Waits until the store holds every reading in <paramref name="taken"/> (or <paramref name="wait"/> passes), then
    /// counts. A stored reading no device took fails the test: it would be a reading made up on the way.
    /// </summary>
    public static async Task<Tally> TallyAsync(string fault, HttpClient http, IReadOnlyDictionary<string, List<(long Epoch, long Seq)>> taken, TimeSpan wait)
    {
        var deadline = DateTime.UtcNow + wait;
        while (true)
        {
            long sent = 0, stored = 0, duplicates = 0;
            var strangers = new List<string>();
            foreach (var (id, readings) in taken)
            {
                var expected = readings.ToHashSet();
                var rows = await StoredAsync(http, id);
                var distinct = rows.ToHashSet();
                sent += expected.Count;
                stored += distinct.Count(expected.Contains);
                duplicates += rows.Count - distinct.Count;
                strangers.AddRange(distinct.Where(r => !expected.Contains(r)).Take(5).Select(r => $"{id} epoch {r.Epoch} seq {r.Seq}"));
            }
            var tally = new Tally(fault, sent, stored, sent - stored, duplicates);
            if ((tally.Lost == 0 && strangers.Count == 0) || DateTime.UtcNow > deadline)
            {
                Assert.True(strangers.Count == 0, $"{fault}: stored readings no device took: {string.Join(", ", strangers)}");
                TestContext.Current.TestOutputHelper?.WriteLine(tally.ToString());
                return tally;
            }
            await Task.Delay(250);
        }
    }

    /// <summary>Asserts the tally a user wants to see: something was sent, nothing lost, nothing stored twice.</summary>
    public static void AssertExactlyOnce(Tally tally, long atLeast = 1)
    {
        Assert.True(tally.Sent >= atLeast, $"{tally.Fault}: only {tally.Sent} readings taken, expected at least {atLeast}");
        Assert.True(tally.Lost == 0 && tally.Duplicates == 0, $"{tally.Fault}: {tally}");
    }
}
