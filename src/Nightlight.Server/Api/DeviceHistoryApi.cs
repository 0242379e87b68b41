using System.Globalization;
using System.Text.Json.Serialization;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Nightlight.Protocol;
using Nightlight.Security;
using Nightlight.Server.Commands;
using Nightlight.Server.Ingest.Http;
using Nightlight.Server.Storage;

namespace Nightlight.Server.Api;

/// <summary>A reading as the API shows it. <c>seq</c> only when the device sent one, <c>epoch</c> only when not 0.</summary>
public sealed record ReadingView(DateTimeOffset Ts, DateTimeOffset Arrived,
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] long? Seq,
    IReadOnlyDictionary<string, double> Measurements)
{
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public long Epoch { get; init; }
}

/// <summary>The last reading on a device: when it was taken, its seq, its measurements.</summary>
public sealed record LastReadingView(DateTimeOffset Ts,
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] long? Seq,
    IReadOnlyDictionary<string, double> Measurements);

/// <summary>
/// One switch of a device: the value the server wants (<c>desired</c>, from <c>source</c>, since <c>desiredAt</c>, a
/// manual value overriding the rules <c>until</c>), the value the device acknowledged (<c>reported</c>, at
/// <c>reportedAt</c>), and <c>inSync</c> (null while either is unknown: a lesson device never reports).
/// </summary>
public sealed record SwitchView(bool? Desired, string? Source, DateTimeOffset? DesiredAt,
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] DateTimeOffset? Until,
    bool? Reported, DateTimeOffset? ReportedAt, bool? InSync);

/// <summary>
/// A device: first and last seen, presence (null when it never said), last reading, LED state (what the device
/// acknowledged; for a lesson device, which never does, the last command sent), and every switch's desired and
/// reported state.
/// </summary>
public sealed record DeviceView(string Id, DateTimeOffset FirstSeen, DateTimeOffset LastSeen, bool? Online, LastReadingView? LastReading, bool? LedOn,
    string? Mode = null)
{
    /// <summary>Desired and reported state by switch name (<c>led_on</c>, <c>heating_on</c>); empty before any command.</summary>
    public IReadOnlyDictionary<string, SwitchView> State { get; init; } = new Dictionary<string, SwitchView>();

    /// <summary>
    /// Readings lost on the way: seqs not stored between the first and last stored seq of each epoch. Only on
    /// <c>GET /api/devices/{id}</c>, and only for a device that numbers its readings.
    /// </summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public long? Missing { get; init; }
}

/// <summary>One downsampled bucket: its start, how many readings, and min/avg/max per measurement.</summary>
public sealed record BucketView(DateTimeOffset Start, long Count, IReadOnlyDictionary<string, BucketStats> Measurements);

/// <summary>A command with its status: sent, delivered, acknowledged, expired, superseded or failed; <c>command</c> is the switch it sets, <c>{"led_on": true}</c>.</summary>
public sealed record CommandView(string Id, string DeviceId, IReadOnlyDictionary<string, bool> Command, string Source, string Status,
    DateTimeOffset Created, DateTimeOffset Updated,
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] DateTimeOffset? Expires);

/// <summary>
/// Body of <c>POST /api/devices/{id}/commands</c>: one switch, <c>{"led_on": true, "overrideFor": "10m"}</c> or
/// <c>{"heating_on": true}</c>.
/// </summary>
public sealed record CommandRequest([property: JsonPropertyName("led_on")] bool? LedOn, string? OverrideFor,
    [property: JsonPropertyName("heating_on")] bool? HeatingOn = null);

/// <summary>
/// The history API: devices, their readings (raw or in buckets) and their commands, under <c>/api/devices</c>.
/// </summary>
public static class DeviceHistoryApi
{
    /// <summary>Raw readings returned when the request gives no <c>limit</c>.</summary>
    public const int DefaultReadingLimit = 10_000;

    /// <summary>Most raw readings one request may ask for.</summary>
    public const int MaxReadingLimit = 100_000;

    /// <summary>Most buckets one request may ask for.</summary>
    public const int MaxBuckets = 10_000;

    /// <summary>Registers the OpenAPI document (served at <c>/openapi/v1.json</c> by <see cref="MapDeviceApi"/>).</summary>
    public static IHostApplicationBuilder AddDeviceApi(this IHostApplicationBuilder builder)
    {
        builder.Services.AddOpenApi();
        builder.Services.AddProblemDetails();
        builder.Services.AddNightlightToken();
        builder.AddHttpDevices();
        return builder;
    }

    public static IEndpointRouteBuilder MapDeviceApi(this IEndpointRouteBuilder app)
    {
        app.MapOpenApi();
        var api = app.MapGroup("/api/devices").WithTags("Devices");
        api.MapGet("/", GetDevices).WithName("GetDevices").WithSummary("Every device the server has seen");
        api.MapGet("/{id}", GetDevice).WithName("GetDevice").WithSummary("One device: first and last seen, online, last reading, LED state, desired and reported state per switch");
        api.MapGet("/{id}/readings", GetReadings).WithName("GetReadings")
            .WithSummary("Readings in a time range (default: the last hour), raw or downsampled into buckets")
            .WithDescription($"from, to: ISO 8601 times. bucket: 10s, 1m, 1h or a number of seconds; with it, each item is " +
                $"{{start, count, measurements: {{name: {{min, avg, max}}}}}}. limit: raw readings returned, oldest first " +
                $"(default {DefaultReadingLimit}, at most {MaxReadingLimit}); a bucketed query returns at most {MaxBuckets} buckets.");
        api.MapGet("/{id}/commands", GetCommands).WithName("GetCommands").WithSummary("Commands sent to the device, newest first");
        // Sending a command changes state: it needs the bearer token when one is configured (docs/security.md).
        api.MapPost("/{id}/commands", PostCommand).WithName("PostCommand").RequireNightlightToken()
            .WithSummary("Send a command by hand ({\"led_on\": true} or {\"heating_on\": true}); it overrides the rules for the device for overrideFor (default 5m)");
        app.MapOverrideApi();
        // Devices that talk HTTP instead of MQTT: telemetry in, commands out by long-poll.
        app.MapHttpDevices();
        return app;
    }

    public static Ok<List<DeviceView>> GetDevices(DeviceRegistry devices) => TypedResults.Ok(devices.All().Select(ToView).ToList());

    public static async Task<Results<Ok<DeviceView>, ProblemHttpResult>> GetDevice(string id, DeviceRegistry devices, ITelemetryStore store,
        CancellationToken cancellationToken)
    {
        if (devices.Get(id) is not { } device)
        {
            return UnknownDevice(id);
        }
        var numbering = await store.NumberingAsync(id, cancellationToken);
        return TypedResults.Ok(ToView(device) with { Missing = numbering.Count == 0 ? null : numbering.Sum(e => e.Missing) });
    }

    public static async Task<Results<Ok<List<ReadingView>>, Ok<List<BucketView>>, ProblemHttpResult>> GetReadings(
        string id, string? from, string? to, string? bucket, int? limit, DeviceRegistry devices, ITelemetryStore store, CancellationToken cancellationToken)
    {
        if (devices.Get(id) is not { } device)
        {
            return UnknownDevice(id);
        }
        var now = DateTimeOffset.UtcNow;
        if (!TryTime(to, now, out var end) || !TryTime(from, end.AddHours(-1), out var start))
        {
            return BadRequest("from and to must be ISO 8601 times, for example 2026-11-25T22:00:00Z");
        }
        if (end <= start)
        {
            return BadRequest("from must be before to");
        }
        if (bucket is null)
        {
            var take = limit ?? DefaultReadingLimit;
            if (take is < 1 or > MaxReadingLimit)
            {
                return BadRequest($"limit must be between 1 and {MaxReadingLimit}");
            }
            var readings = await store.ReadingsAsync(id, start, end, take, cancellationToken);
            return TypedResults.Ok(readings.Select(r => new ReadingView(r.Ts, r.Arrived, r.Seq, r.Measurements) { Epoch = r.Epoch }).ToList());
        }
        if (!TryBucket(bucket, out var size))
        {
            return BadRequest("bucket must be a duration: 10s, 1m, 1h, or a number of seconds");
        }
        if ((end - start) / size > MaxBuckets)
        {
            return BadRequest($"the range holds more than {MaxBuckets} buckets of {bucket}: choose a larger bucket");
        }
        var names = device.LastReading?.Measurements.Keys.Append("light").ToList() ?? ["light"];
        var buckets = await store.BucketsAsync(id, start, end, size, names, cancellationToken);
        return TypedResults.Ok(buckets.Select(b => new BucketView(b.Start, b.Count, b.Measurements)).ToList());
    }

    public static async Task<Results<Ok<List<CommandView>>, ProblemHttpResult>> GetCommands(string id, int? limit, DeviceRegistry devices,
        ITelemetryStore store, CommandSender commands, CancellationToken cancellationToken)
    {
        if (!devices.Contains(id))
        {
            return UnknownDevice(id);
        }
        var take = limit ?? 100;
        if (take is < 1 or > 10_000)
        {
            return BadRequest("limit must be between 1 and 10000");
        }
        // The store lags the command sender by a batch: its in-memory states are newer.
        var merged = new Dictionary<string, CommandRecord>(StringComparer.Ordinal);
        foreach (var c in await store.CommandsAsync(id, take, cancellationToken))
        {
            merged[c.Id] = c;
        }
        foreach (var c in commands.Recent(id))
        {
            merged[c.Id] = c;
        }
        return TypedResults.Ok(merged.Values.OrderByDescending(c => c.Created).ThenByDescending(c => c.Id, StringComparer.Ordinal)
            .Take(take).Select(ToView).ToList());
    }

    public static Results<Accepted<CommandView>, ProblemHttpResult> PostCommand(string id, CommandRequest request, DeviceRegistry devices,
        CommandSender commands)
    {
        if (!Topics.IsValidDeviceId(id) || !devices.Contains(id))
        {
            return UnknownDevice(id);
        }
        if ((request.LedOn, request.HeatingOn) is not ((null, not null) or (not null, null)))
        {
            return BadRequest("the body must set one switch, {\"led_on\": true|false} or {\"heating_on\": true|false}, optionally with \"overrideFor\": \"10m\"");
        }
        var (switchName, on) = request.LedOn is { } led ? (CommandMessage.Led, led) : (CommandMessage.Heating, request.HeatingOn!.Value);
        if (devices.DeclaredSwitches(id) is { Count: > 0 } declared && !declared.Contains(switchName))
        {
            return BadRequest($"device '{id}' has no switch {switchName}; it declares {string.Join(", ", declared)}");
        }
        var overrideFor = commands.DefaultOverride;
        if (request.OverrideFor is { } text && !Durations.TryParse(text, out overrideFor))
        {
            return BadRequest("overrideFor must be a duration: 30s, 10m, 1h");
        }
        var record = commands.SendManual(id, on, overrideFor, switchName);
        return TypedResults.Accepted($"/api/devices/{Uri.EscapeDataString(id)}/commands", ToView(record));
    }

    static DeviceView ToView(DeviceRecord d) => new(d.Id, d.FirstSeen, d.LastSeen, d.Online,
        d.LastReading is { } r ? new LastReadingView(r.Ts, r.Seq, r.Measurements) : null, d.LedOn, d.Mode)
    {
        State = d.Switches.ToDictionary(s => s.Name, s => new SwitchView(s.Desired, s.Source, s.DesiredAt, s.Until, s.Reported, s.ReportedAt, s.InSync),
            StringComparer.Ordinal),
    };

    static CommandView ToView(CommandRecord c) => new(c.Id, c.DeviceId, new Dictionary<string, bool> { [c.Switch] = c.LedOn }, c.Source, c.Status,
        c.Created, c.Updated, c.Expires);

    static ProblemHttpResult UnknownDevice(string id) =>
        TypedResults.Problem(statusCode: StatusCodes.Status404NotFound, title: "Unknown device", detail: $"No device '{id}' has been seen by this server.");

    static ProblemHttpResult BadRequest(string detail) =>
        TypedResults.Problem(statusCode: StatusCodes.Status400BadRequest, title: "Bad request", detail: detail);

    static bool TryTime(string? text, DateTimeOffset fallback, out DateTimeOffset value)
    {
        if (string.IsNullOrEmpty(text))
        {
            value = fallback;
            return true;
        }
        return DateTimeOffset.TryParse(text, CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal | DateTimeStyles.AdjustToUniversal, out value);
    }

    static bool TryBucket(string text, out TimeSpan size) => Durations.TryParse(text, out size) && size >= TimeSpan.FromMilliseconds(1);
}
