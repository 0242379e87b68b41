using System.Reflection;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.AspNetCore.StaticFiles;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;
using Nightlight.Hardware;

namespace Nightlight.Web;

/// <summary>Registers and maps the web part: dashboard, hardware page, live events and the CounterFit-compatible API.</summary>
public static class WebExtensions
{
    /// <summary>
    /// Registers the live feed (its own MQTT subscription), the event fan-out and, unless the host registered one, a
    /// virtual board with the nightlight's parts. Reads <c>Server:Broker</c> (else <c>Device:Broker</c>),
    /// <c>Server:Threshold</c> and <c>Device:Id</c>.
    /// </summary>
    public static IHostApplicationBuilder AddNightlightWeb(this IHostApplicationBuilder builder)
    {
        builder.Services.AddOptions<DashboardOptions>().Configure<IConfiguration>((o, config) =>
        {
            o.Broker = config["Server:Broker"] is { Length: > 0 } server ? server : config["Device:Broker"] ?? o.Broker;
            o.Threshold = config.GetValue("Server:Threshold", o.Threshold);
            o.InProcess = config.GetValue("Server:InProcess", o.InProcess);
            o.LocalDeviceId = config["Device:Id"] is { Length: > 0 } id ? id : null;
            // The dashboard reads what the server reads, so it logs in as the server does (in `up`, the in-process identity).
            o.Username = config["Server:Username"] is { Length: > 0 } user ? user : null;
            o.Password = config["Server:Password"];
        });
        builder.Services.TryAddSingleton(TimeProvider.System);
        builder.Services.TryAddSingleton(_ => VirtualBoard.CreateNightlight());
        builder.Services.AddSingleton<LiveDevices>();
        builder.Services.AddSingleton<LiveEvents>();
        builder.Services.AddSingleton<LiveFeed>();
        builder.Services.AddHostedService(sp => sp.GetRequiredService<LiveFeed>());
        builder.Services.AddHostedService<HardwareFeed>();
        builder.Services.AddHostedService<OverrideFeed>();
        builder.Services.AddHostedService<MessageView>();
        return builder;
    }

    /// <summary>
    /// Maps <c>/</c> (dashboard), <c>/hardware</c>, <c>/assets/*</c>, <c>/api/config</c>, <c>/api/events</c> (server-sent
    /// events), <c>/api/hardware</c> and CounterFit's <c>/connect</c>, <c>/sensor_value</c>, <c>/actuator_value</c>.
    /// </summary>
    public static IEndpointRouteBuilder MapNightlightWeb(this IEndpointRouteBuilder app)
    {
        app.MapGet("/", () => Page("index.html")).WithName("Dashboard");
        app.MapGet("/hardware", () => Page("hardware.html")).WithName("HardwarePage");
        app.MapGet("/assets/{**path}", Asset).WithName("Asset");
        app.MapGet("/api/config", (IOptions<DashboardOptions> options) => TypedResults.Ok(new
        {
            threshold = options.Value.Threshold,
            localDeviceId = options.Value.LocalDeviceId,
            ledPort = VirtualBoard.LedPort,
            lightPort = VirtualBoard.LightPort,
        })).WithName("GetConfig");
        app.MapGet("/api/events", (LiveEvents events, LiveDevices devices, VirtualBoard board, IOptions<DashboardOptions> options,
                CancellationToken cancellationToken) =>
            TypedResults.ServerSentEvents(events.StreamAsync(
            [
                ("snapshot", new { threshold = options.Value.Threshold, devices = devices.Snapshot() }),
                ("hardware", HardwareEndpoints.View(board)),
            ], cancellationToken))).WithName("LiveEvents");
        app.MapHardwareApi();
        app.MapCounterFitApi();
        return app;
    }

    static readonly Assembly Assets = typeof(WebExtensions).Assembly;
    static readonly FileExtensionContentTypeProvider ContentTypes = new();

    static IResult Page(string name) => Asset(name);

    static IResult Asset(string path)
    {
        // Only names embedded at build time are served, so no path can reach outside the pages.
        var stream = Assets.GetManifestResourceStream("wwwroot/" + path);
        if (stream is null)
        {
            return Results.NotFound();
        }
        var type = ContentTypes.TryGetContentType(path, out var known) ? known : "application/octet-stream";
        return Results.Stream(stream, type.StartsWith("text/", StringComparison.Ordinal) || type.EndsWith("javascript", StringComparison.Ordinal)
            ? type + "; charset=utf-8" : type);
    }
}

/// <summary>Sends the board to open pages once a second (random, curve and replay values move) and on every change.</summary>
sealed class HardwareFeed(VirtualBoard board, LiveEvents events) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        board.Changed += Send;
        try
        {
            using var timer = new PeriodicTimer(TimeSpan.FromSeconds(1));
            while (await timer.WaitForNextTickAsync(stoppingToken))
            {
                Send();
            }
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
        }
        finally
        {
            board.Changed -= Send;
        }
    }

    void Send()
    {
        if (events.Listeners > 0)
        {
            events.Publish("hardware", HardwareEndpoints.View(board));
        }
    }
}
