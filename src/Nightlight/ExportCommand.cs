using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using Nightlight.Protocol;
using Nightlight.Server;

namespace Nightlight.Cli;

/// <summary>
/// <c>nightlight export --device ID [--from T] [--to T] [--out FILE]</c>: one device's readings as CSV, read straight
/// from the configured store (the server may keep running). Progress goes to standard error once a second.
/// </summary>
static class ExportCommand
{
    public static Command Create()
    {
        var device = new Option<string>("--device") { Description = "Device id to export", Required = true };
        var from = new Option<string?>("--from") { Description = "First reading time, ISO 8601 (default: the oldest)" };
        var to = new Option<string?>("--to") { Description = "End of the range, exclusive, ISO 8601 (default: now)" };
        var output = new Option<string?>("--out") { Description = "CSV file to write (default: standard output)" };
        var data = new Option<string?>("--data") { Description = "Data directory of the SQLite store (default ./nightlight-data)" };
        var database = new Option<string?>("--database") { Description = "PostgreSQL connection string, when the server stores there" };
        var command = new Command("export", "Write one device's stored readings to CSV: device, ts, arrived, seq, then one column per measurement.")
        {
            device, from, to, output, data, database,
        };
        command.SetAction((parse, cancellationToken) => RunAsync(parse.GetValue(device)!, parse.GetValue(from), parse.GetValue(to), parse.GetValue(output),
            new Dictionary<string, string?> { ["Data:Directory"] = parse.GetValue(data), ["Storage:ConnectionString"] = parse.GetValue(database) }, cancellationToken));
        return command;
    }

    static async Task<int> RunAsync(string deviceId, string? fromText, string? toText, string? outPath, Dictionary<string, string?> flags, CancellationToken cancellationToken)
    {
        if (!Topics.IsValidDeviceId(deviceId))
        {
            return Fail(2, $"'{deviceId}' is not a valid device id");
        }
        if (!TryTime(fromText, DateTimeOffset.UnixEpoch, out var from) || !TryTime(toText, DateTimeOffset.UtcNow, out var to))
        {
            return Fail(2, "--from and --to must be ISO 8601 times, for example 2026-11-25T22:00:00Z");
        }
        // The same configuration order as the server (flags given here win), so export finds the server's store.
        var config = new ConfigurationBuilder()
            .AddJsonFile(Path.Combine(AppContext.BaseDirectory, "appsettings.json"), optional: true)
            .AddJsonFile(Path.Combine(Directory.GetCurrentDirectory(), "nightlight.json"), optional: true)
            .AddEnvironmentVariables("NIGHTLIGHT_")
            .AddInMemoryCollection(flags.Where(f => f.Value is not null))
            .Build();
        if (MissingDatabase(config) is { } missing)
        {
            // Opening it would create an empty database and then report "no device": say what is wrong, change nothing.
            return Fail(2, $"no Nightlight database at {missing}; --data names the directory a server stored in (default ./nightlight-data)");
        }
        using var loggers = Hosts.CommandLoggers();
        await using var store = ServerExtensions.CreateStore(config, loggers);
        try
        {
            await store.InitializeAsync(cancellationToken);
            var device = (await store.DevicesAsync(cancellationToken)).FirstOrDefault(d => d.Id == deviceId);
            if (device is null)
            {
                return Fail(1, $"no device '{deviceId}' in the {store.Provider} store at {store.Location}");
            }
            // Columns come from the device's latest reading; light always has one, the lesson's measurement.
            var names = (device.LastReading?.Measurements.Keys ?? []).Append("light").Distinct(StringComparer.Ordinal)
                .OrderBy(n => n == "light" ? "" : n, StringComparer.Ordinal).ToList();
            var total = await store.CountReadingsAsync(deviceId, from, to, cancellationToken);
            await using var stream = outPath is null ? Console.OpenStandardOutput() : File.Create(outPath);
            await using var writer = new StreamWriter(stream, new UTF8Encoding(false), 1 << 16);
            await writer.WriteLineAsync("device,ts,arrived,seq," + string.Join(',', names.Select(Csv)));
            var line = new StringBuilder();
            long written = 0;
            var progress = Stopwatch.StartNew();
            await foreach (var r in store.StreamReadingsAsync(deviceId, from, to, cancellationToken))
            {
                line.Clear().Append(Csv(r.DeviceId)).Append(',').Append(r.Ts.UtcDateTime.ToString("O", CultureInfo.InvariantCulture))
                    .Append(',').Append(r.Arrived.UtcDateTime.ToString("O", CultureInfo.InvariantCulture)).Append(',')
                    .Append(r.Seq?.ToString(CultureInfo.InvariantCulture));
                foreach (var name in names)
                {
                    line.Append(',');
                    if (r.Measurements.TryGetValue(name, out var value))
                    {
                        line.Append(Wire.FormatNumber(value));
                    }
                }
                await writer.WriteLineAsync(line);
                written++;
                if (progress.ElapsedMilliseconds >= 1000)
                {
                    progress.Restart();
                    Console.Error.WriteLine($"exported {written:N0} of {total:N0} readings ({100.0 * written / Math.Max(1, total):F0}%)");
                }
            }
            await writer.FlushAsync(cancellationToken);
            Console.Error.WriteLine($"exported {written:N0} readings of {deviceId}{(outPath is null ? "" : $" to {outPath}")}");
            return 0;
        }
        catch (Exception e) when (e is System.Data.Common.DbException or IOException or UnauthorizedAccessException)
        {
            return Fail(1, e.Message);
        }
    }

    // Names come from devices. As OWASP advises against CSV injection, a cell a spreadsheet would take for a formula
    // (=, +, -, @, tab, carriage return first) gets a leading apostrophe, and is quoted like any cell with , " or a newline.
    static string Csv(string text)
    {
        var formula = text.Length > 0 && text[0] is '=' or '+' or '-' or '@' or '\t' or '\r';
        if (formula)
        {
            text = "'" + text;
        }
        return !formula && text.IndexOfAny([',', '"', '\n', '\r']) < 0 ? text : "\"" + text.Replace("\"", "\"\"", StringComparison.Ordinal) + "\"";
    }

    /// <summary>The SQLite file export would read, when the configured store is SQLite and that file does not exist.</summary>
    static string? MissingDatabase(IConfiguration config)
    {
        var storage = config.GetSection(Nightlight.Server.Storage.StorageOptions.Section).Get<Nightlight.Server.Storage.StorageOptions>() ?? new();
        if (storage.UsesPostgres)
        {
            return null;
        }
        var data = config.GetSection(Nightlight.Server.Storage.DataOptions.Section).Get<Nightlight.Server.Storage.DataOptions>() ?? new();
        var path = Path.Combine(Path.GetFullPath(data.Directory), ServerExtensions.SqliteFileName);
        return File.Exists(path) ? null : path;
    }

    static bool TryTime(string? text, DateTimeOffset fallback, out DateTimeOffset value)
    {
        if (string.IsNullOrEmpty(text))
        {
            value = fallback;
            return true;
        }
        return DateTimeOffset.TryParse(text, CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal | DateTimeStyles.AdjustToUniversal, out value);
    }

    static int Fail(int code, string message)
    {
        Console.Error.WriteLine($"error: {message}");
        return code;
    }
}
