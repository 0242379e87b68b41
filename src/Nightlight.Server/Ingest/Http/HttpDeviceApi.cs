using System.Buffers;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Nightlight.Protocol;
using Nightlight.Security;
using Nightlight.Server.Commands;
using Nightlight.Server.Pipeline;

namespace Nightlight.Server.Ingest.Http;

/// <summary>
/// Devices that cannot speak MQTT: <c>POST /api/devices/{id}/telemetry</c> takes the payload a device publishes on
/// <c>{id}/telemetry</c>, <c>GET /api/devices/{id}/commands/next?wait=30s</c> long-polls for the payload it would get
/// on <c>{id}/commands</c>, and <c>POST /api/devices/{id}/acks</c> takes what it would publish on <c>{id}/acks</c>.
/// The same parser, rules, store, registry and command status serve both transports (docs/protocols.md).
/// </summary>
public static class HttpDeviceApi
{
    /// <summary>Long-poll wait when the request gives none.</summary>
    public static readonly TimeSpan DefaultWait = TimeSpan.FromSeconds(30);

    /// <summary>Longest long-poll wait; proxies commonly cut idle requests after a minute.</summary>
    public static readonly TimeSpan MaxWait = TimeSpan.FromSeconds(60);

    /// <summary>
    /// Longest a <c>POST .../telemetry?wait=stored</c> waits for the store; past it the answer is 202 and the device sends
    /// the reading again later (the store is down or far behind).
    /// </summary>
    public static readonly TimeSpan MaxStoredWait = TimeSpan.FromSeconds(10);

    const int MaxAckBytes = 1024;

    /// <summary>
    /// Registers the credential check, the HTTP command queue (the command sender's route) and its events (the identities
    /// file unless the broker did).
    /// </summary>
    public static IHostApplicationBuilder AddHttpDevices(this IHostApplicationBuilder builder)
    {
        builder.Services.TryAddSingleton(sp => DeviceIdentities.InDirectory(DataDirectory.Resolve(sp.GetRequiredService<IConfiguration>())));
        builder.Services.AddSingleton<HttpDeviceAccess>();
        builder.Services.AddSingleton<HttpDeviceEvents>();
        builder.Services.AddSingleton<HttpCommandQueue>();
        builder.Services.AddSingleton<ICommandRoute>(sp => sp.GetRequiredService<HttpCommandQueue>());
        return builder;
    }

    public static IEndpointRouteBuilder MapHttpDevices(this IEndpointRouteBuilder app)
    {
        var api = app.MapGroup("/api/devices").WithTags("HTTP devices");
        api.MapPost("/{id}/telemetry", PostTelemetry).WithName("PostTelemetry")
            .WithSummary("A device's reading, the JSON it would publish on {id}/telemetry; device credential in Authorization")
            .WithDescription("wait=stored (a reading with seq): answer 200 with {\"epoch\", \"from\", \"seq\"} once the store has it, as on {id}/stored, " +
                "or 202 when it is not stored within 10 s");
        api.MapGet("/{id}/commands/next", GetNextCommand).WithName("GetNextCommand")
            .WithSummary("Long-poll: the device's next command as soon as there is one (200), or 204 after wait (default 30s, at most 60s)");
        api.MapPost("/{id}/acks", PostAck).WithName("PostAck")
            .WithSummary("A device's acknowledgement of an ordered command, the JSON it would publish on {id}/acks");
        return app;
    }

    public static async Task<Results<ContentHttpResult, Accepted, ProblemHttpResult>> PostTelemetry(string id, string? wait, HttpContext context,
        HttpDeviceAccess access, HttpCommandQueue queue, HttpDeviceEvents events, ReadingPipeline pipeline, ServerMetrics metrics,
        IOptions<ServerOptions> options, ILoggerFactory loggers)
    {
        var logger = loggers.CreateLogger(typeof(HttpDeviceApi));
        if (await RefuseAsync(id, context, access, options.Value, logger) is { } refusal)
        {
            return refusal;
        }
        if (wait is not null and not "stored")
        {
            return Problem(StatusCodes.Status400BadRequest, "Bad request", "wait takes one value, stored: answer once the store has the reading");
        }
        var body = await ReadBodyAsync(context.Request, TelemetryParser.MaxPayloadBytes, context.RequestAborted);
        if (!TelemetryParser.TryParse(id, body, out var reading, out var error))
        {
            metrics.TelemetryRejected();
            logger.LogWarning("Rejected telemetry from device {DeviceId} over HTTP: {Problem}", id, error);
            return Problem(StatusCodes.Status400BadRequest, "Bad telemetry", $"{error}; expected the JSON a device publishes, e.g. {{\"light\": 412}}");
        }
        if (wait is not null && reading.Seq is null)
        {
            return Problem(StatusCodes.Status400BadRequest, "Bad request", "wait=stored needs a reading with seq: only numbered readings are acknowledged");
        }
        // Known as an HTTP device before its reading is decided on, so the answer comes here rather than on MQTT.
        if (!queue.Touch(id))
        {
            return Problem(StatusCodes.Status503ServiceUnavailable, "Too many devices", "this server tracks too many HTTP devices right now");
        }
        var stored = wait is null ? null : new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        try
        {
            // The same way in as AMQP's: the callback runs once the store committed the reading (or skipped its copy).
            await pipeline.AcceptAsync(reading, fromGroupFeed: false, stored is null ? null : stored.SetResult, context.RequestAborted);
        }
        catch (System.Threading.Channels.ChannelClosedException)
        {
            return Problem(StatusCodes.Status503ServiceUnavailable, "Stopping", "the server is stopping and takes no more readings");
        }
        events.ReadingAccepted(reading);
        if (stored is not null && reading.Seq is { } seq &&
            await stored.Task.WaitAsync(MaxStoredWait, context.RequestAborted).ContinueWith(t => t.IsCompletedSuccessfully, TaskScheduler.Default))
        {
            return TypedResults.Content(new StoredAck(reading.Epoch, seq, seq).ToString(), "application/json", statusCode: StatusCodes.Status200OK);
        }
        return TypedResults.Accepted((string?)null);
    }

    public static async Task<Results<ContentHttpResult, NoContent, ProblemHttpResult>> GetNextCommand(string id, string? wait, HttpContext context,
        HttpDeviceAccess access, HttpCommandQueue queue, CommandSender commands, IOptions<ServerOptions> options, ILoggerFactory loggers)
    {
        var logger = loggers.CreateLogger(typeof(HttpDeviceApi));
        if (await RefuseAsync(id, context, access, options.Value, logger) is { } refusal)
        {
            return refusal;
        }
        var duration = DefaultWait;
        // Zero (an immediate look) is a valid wait here, though not a valid duration for a setting.
        if (wait is "0" or "0s" or "0ms")
        {
            duration = TimeSpan.Zero;
        }
        else if (wait is not null && (!Durations.TryParse(wait, out duration) || duration > MaxWait))
        {
            return Problem(StatusCodes.Status400BadRequest, "Bad request", $"wait must be a duration from 0s to {MaxWait.TotalSeconds:0}s, for example 30s");
        }
        FetchedCommand? next;
        try
        {
            next = await queue.NextAsync(id, duration, context.RequestAborted);
        }
        catch (OperationCanceledException) when (context.RequestAborted.IsCancellationRequested)
        {
            // The device hung up while waiting; nothing was taken from its queue.
            return TypedResults.NoContent();
        }
        if (next is null)
        {
            return TypedResults.NoContent();
        }
        if (next.CommandId is { } commandId)
        {
            commands.Delivered(commandId);
        }
        return TypedResults.Content(next.Command.ToString(), "application/json");
    }

    public static async Task<Results<Accepted, ProblemHttpResult>> PostAck(string id, HttpContext context, HttpDeviceAccess access,
        HttpCommandQueue queue, CommandSender commands, IOptions<ServerOptions> options, ILoggerFactory loggers)
    {
        var logger = loggers.CreateLogger(typeof(HttpDeviceApi));
        if (await RefuseAsync(id, context, access, options.Value, logger) is { } refusal)
        {
            return refusal;
        }
        var body = await ReadBodyAsync(context.Request, MaxAckBytes, context.RequestAborted);
        if (!CommandAck.TryParse(body, out var ack, out var error))
        {
            logger.LogWarning("Rejected acknowledgement from device {DeviceId} over HTTP: {Problem}", id, error);
            return Problem(StatusCodes.Status400BadRequest, "Bad acknowledgement", $"{error}; expected {{\"id\": \"...\", \"seq\": 17, \"status\": \"acknowledged\"}}");
        }
        queue.Touch(id);
        commands.Acknowledge(id, ack);
        return TypedResults.Accepted((string?)null);
    }

    /// <summary>The problem to answer when the id is not one this server takes, or the credentials do not allow it; null to go on.</summary>
    static async ValueTask<ProblemHttpResult?> RefuseAsync(string id, HttpContext context, HttpDeviceAccess access, ServerOptions options, ILogger logger)
    {
        if (!Topics.IsValidDeviceId(id))
        {
            logger.LogWarning("Refused {Method} {Path}: not a valid device id", context.Request.Method, TelemetryParser.Printable(context.Request.Path.ToString()));
            return Problem(StatusCodes.Status400BadRequest, "Bad device id",
                $"a device id has 1-{Topics.MaxDeviceIdLength} characters, no '/', '+', '#', spaces or control characters");
        }
        if (!string.IsNullOrEmpty(options.Id) && options.Id != id)
        {
            return Problem(StatusCodes.Status404NotFound, "Not served here", $"this server serves only device '{options.Id}' (Server:Id)");
        }
        var verdict = await access.CheckAsync(context.Request, id, context.RequestAborted);
        if (verdict.Allowed)
        {
            return null;
        }
        if (access.RefusalLog.TryTake(out var suppressed))
        {
            logger.LogWarning("Refused {Method} {Path} for device {DeviceId}: {Problem} ({Suppressed} refusals before this one not logged, more than 10 a second)",
                context.Request.Method, TelemetryParser.Printable(context.Request.Path.ToString()), id, verdict.Problem, suppressed);
        }
        if (verdict.Status == StatusCodes.Status401Unauthorized)
        {
            context.Response.Headers.WWWAuthenticate = HttpDeviceAccess.Challenge;
            return Problem(verdict.Status, "Device credentials required", verdict.Problem);
        }
        return Problem(verdict.Status, "Forbidden", verdict.Problem);
    }

    /// <summary>Reads at most <paramref name="limit"/> + 1 bytes, so an oversized body is refused by the parser, not buffered whole.</summary>
    static async Task<byte[]> ReadBodyAsync(HttpRequest request, int limit, CancellationToken cancellationToken)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(limit + 1);
        try
        {
            var length = 0;
            int read;
            while (length <= limit && (read = await request.Body.ReadAsync(buffer.AsMemory(length, limit + 1 - length), cancellationToken)) > 0)
            {
                length += read;
            }
            return buffer.AsSpan(0, length).ToArray();
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    static ProblemHttpResult Problem(int status, string title, string? detail) =>
        TypedResults.Problem(statusCode: status, title: title, detail: detail);
}
