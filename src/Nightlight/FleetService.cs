using System.Diagnostics;
using Microsoft.Extensions.Options;
using Nightlight.Device;
using Nightlight.Hardware;
using Nightlight.Mqtt;
using Nightlight.Protocol;

namespace Nightlight.Cli;

/// <summary>Configuration section <c>Fleet</c>: many simulated nightlights in one process, for load and demos.</summary>
public sealed class FleetOptions
{
    public const string Section = "Fleet";

    public string Broker { get; set; } = "mqtt://localhost:1883";

    [System.ComponentModel.DataAnnotations.Range(1, 100_000)]
    public int Devices { get; set; } = 100;

    public string Interval { get; set; } = "1s";

    /// <summary>Stop after this long; empty runs until Ctrl+C.</summary>
    public string? Duration { get; set; }

    /// <summary>Light level every device reports; below the threshold every answer is led_on true.</summary>
    public double Light { get; set; } = 100;

    public string IdPrefix { get; set; } = "fleet";

    public string Protocol { get; set; } = "auto";

    /// <summary>
    /// Device credentials for a broker that authenticates: a file of <c>ID SECRET</c> lines, as written by
    /// <c>nightlight devices add PREFIX --count N --save FILE</c>. The fleet then uses these ids (the first
    /// <see cref="Devices"/> of them) instead of <see cref="IdPrefix"/>.
    /// </summary>
    public string? Credentials { get; set; }

    /// <summary>PEM certificate authority the broker's TLS certificate must chain to, for <c>mqtts://</c> and <c>wss://</c> brokers.</summary>
    public string? CaFile { get; set; }

    /// <summary>
    /// <c>drop</c> (default): readings taken offline are dropped. <c>all</c>: each device keeps every reading in its outbox
    /// under the data directory (<c>DIR/devices/ID</c>, with its seq) until the server acknowledges it stored, as
    /// <c>nightlight device --offline all</c> does.
    /// </summary>
    [System.ComponentModel.DataAnnotations.RegularExpression("^(drop|all)$", ErrorMessage = "Fleet:Offline must be drop or all")]
    public string Offline { get; set; } = "drop";

    /// <summary>Reads a credentials file: one <c>ID SECRET</c> per line; blank lines and lines starting with '#' are skipped.</summary>
    public static List<(string Id, string Secret)> ReadCredentials(string path)
    {
        var result = new List<(string, string)>();
        foreach (var (line, number) in File.ReadAllLines(path).Select((l, i) => (l.Trim(), i + 1)))
        {
            if (line.Length == 0 || line[0] == '#')
            {
                continue;
            }
            var parts = line.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
            if (parts.Length != 2 || !Topics.IsValidDeviceId(parts[0]))
            {
                throw new FormatException($"{path} line {number}: expected 'ID SECRET'");
            }
            result.Add((parts[0], parts[1]));
        }
        return result;
    }
}

/// <summary>
/// Runs <see cref="FleetOptions.Devices"/> nightlights, each with its own MQTT connection and id, and prints once a
/// second how many readings were sent and how many commands came back. Stops the host when the duration is up.
/// </summary>
sealed class FleetService(IOptions<FleetOptions> options, IConfiguration configuration, ILoggerFactory loggerFactory, LessonOutput output,
    IHostApplicationLifetime lifetime) : MqttClientService
{
    sealed class CountingLed : ILed
    {
        public long Commands;

        public ValueTask SetAsync(bool on, CancellationToken cancellationToken)
        {
            Interlocked.Increment(ref Commands);
            return ValueTask.CompletedTask;
        }
    }

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var o = options.Value;
        var interval = Durations.Parse(o.Interval, "Fleet:Interval");
        TimeSpan? duration = string.IsNullOrEmpty(o.Duration) ? null : Durations.Parse(o.Duration, "Fleet:Duration");
        var sensor = new VirtualLightSensor(o.Light);
        var credentials = string.IsNullOrEmpty(o.Credentials) ? null : FleetOptions.ReadCredentials(o.Credentials);
        var count = credentials is null ? o.Devices : Math.Min(o.Devices, credentials.Count);
        var devices = new List<(ManagedMqttConnection Connection, NightlightDevice Device, CountingLed Led)>(count);
        var keepAll = o.Offline == "all";
        var dataRoot = Path.GetFullPath(configuration["Data:Directory"] is { Length: > 0 } data ? data : "nightlight-data");
        for (var i = 1; i <= count; i++)
        {
            var id = credentials is null ? $"{o.IdPrefix}{i:D5}" : credentials[i - 1].Id;
            var led = new CountingLed();
            var device = new NightlightDevice(new DeviceClientOptions
            {
                Id = id,
                // Without a data directory each run numbers from 1 in a new epoch; with one, numbering goes on.
                DataDirectory = keepAll ? Path.Combine(dataRoot, "devices", id) : null,
                Offline = keepAll ? OfflinePolicy.All : OfflinePolicy.Drop,
                Connection = MqttConnectionOptions.From(o.Broker, Topics.DeviceClientId(id), o.Protocol,
                    username: credentials is null ? null : id, password: credentials?[i - 1].Secret, caFile: o.CaFile),
            }, new NightlightDeviceOptions { Interval = interval }, sensor, led, loggerFactory);
            devices.Add((device.Client.Connection, device, led));
        }

        using var run = CancellationTokenSource.CreateLinkedTokenSource(stoppingToken);
        var clock = Stopwatch.StartNew();
        // Spread the first readings over one interval so the fleet does not publish in lockstep.
        var tasks = devices.Select((d, i) => Task.Run(async () =>
        {
            await Task.Delay(interval * ((double)i / devices.Count), run.Token);
            await d.Device.RunAsync(run.Token);
        }, run.Token)).ToList();

        long lastSent = 0, lastAnswered = 0;
        var say = output;
        try
        {
            while (!run.IsCancellationRequested)
            {
                await Task.Delay(TimeSpan.FromSeconds(1), run.Token);
                var connected = devices.Count(d => d.Connection.IsConnected);
                var sent = devices.Sum(d => d.Device.Client.Telemetry.Sent);
                var answered = devices.Sum(d => Interlocked.Read(ref d.Led.Commands));
                say.Say("fleet", $"{clock.Elapsed.TotalSeconds,5:F0}s  connected {connected}/{devices.Count}  sent {sent} (+{sent - lastSent}/s)  answered {answered} (+{answered - lastAnswered}/s)");
                lastSent = sent;
                lastAnswered = answered;
                if (duration is { } d && clock.Elapsed >= d)
                {
                    break;
                }
            }
        }
        catch (OperationCanceledException)
        {
        }
        await run.CancelAsync();
        await Task.WhenAll(tasks.Select(t => t.ContinueWith(_ => { }, TaskScheduler.Default)));
        if (keepAll)
        {
            // Readings are taken no more; those kept get their moment to be stored, all devices at once.
            var logger = loggerFactory.CreateLogger<FleetService>();
            await Task.WhenAll(devices.Select(d => DeviceService.DrainAsync(d.Device.Client, logger, Path.Combine(dataRoot, "devices", d.Device.Client.Id))));
        }
        // Give commands still in flight a moment to arrive before counting.
        await Task.Delay(TimeSpan.FromMilliseconds(500), CancellationToken.None);
        var totalSent = devices.Sum(d => d.Device.Client.Telemetry.Sent);
        var totalAnswered = devices.Sum(d => Interlocked.Read(ref d.Led.Commands));
        var seconds = clock.Elapsed.TotalSeconds;
        say.Say("fleet", $"done: {devices.Count} devices, {totalSent} readings sent, {totalAnswered} answered " +
                         $"({(totalSent == 0 ? 0 : 100.0 * totalAnswered / totalSent):F2}%), {totalAnswered / seconds:F0} answers/s over {seconds:F1} s");
        await Task.WhenAll(devices.Select(d => d.Device.DisposeAsync().AsTask()));
        if (duration is not null)
        {
            lifetime.StopApplication();
        }
    }
}
