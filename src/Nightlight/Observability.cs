using Microsoft.Extensions.Diagnostics.HealthChecks;
using Nightlight.Server;
using OpenTelemetry.Metrics;

namespace Nightlight.Cli;

/// <summary>
/// Metrics (System.Diagnostics.Metrics, exported for Prometheus at <c>/metrics</c>) and health: <c>/healthz</c>
/// answers while the process runs, <c>/readyz</c> only when its broker listens, its server is connected and its store is open.
/// </summary>
static class Observability
{
    public static void AddNightlightObservability(this IHostApplicationBuilder builder, Roles roles)
    {
        builder.Services.AddOpenTelemetry().WithMetrics(metrics => metrics
            // System.Runtime: .NET's own (garbage collections and their pauses, thread pool, memory).
            .AddMeter(Nightlight.Broker.BrokerMetrics.MeterName, ServerMetrics.MeterName, "Nightlight.*", "System.Runtime")
            // Every scrape current (the exporter's default keeps a scrape's answer for 300 ms): the bench counts the
            // readings stored at the start and the end of its window.
            .AddPrometheusExporter(exporter => exporter.ScrapeResponseCacheDurationMilliseconds = 0));
        // ASP.NET logs every probe that is not Healthy (a warning per /readyz while the disk is full); ReadinessLog
        // says it once per change instead.
        builder.Logging.AddFilter("Microsoft.Extensions.Diagnostics.HealthChecks.DefaultHealthCheckService", LogLevel.None);
        builder.Services.AddSingleton<ReadinessLog>();
        var health = builder.Services.AddHealthChecks();
        if (roles.HasFlag(Roles.Broker))
        {
            health.AddCheck<BrokerReady>("broker", tags: ["ready"]);
        }
        if (roles.HasFlag(Roles.Server))
        {
            health.AddCheck<ServerReady>("server", tags: ["ready"]);
            health.AddCheck<StoreReady>("store", tags: ["ready"]);
        }
    }

    public static void MapNightlightObservability(this WebApplication app)
    {
        app.MapPrometheusScrapingEndpoint("/metrics");
        app.MapHealthChecks("/healthz", new() { Predicate = _ => false });
        app.MapHealthChecks("/readyz", new() { Predicate = check => check.Tags.Contains("ready") });
    }

    sealed class BrokerReady(Nightlight.Mqtt.BrokerStartSignal started, Nightlight.Broker.Core.Persistence.ISessionStore store, ReadinessLog log) : IHealthCheck
    {
        public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default) =>
            Task.FromResult(log.Report(context, !started.Started.IsCompleted ? HealthCheckResult.Unhealthy("broker not started")
                : store is Nightlight.Broker.Core.Persistence.FileSessionStore { Durable: false } ? HealthCheckResult.Degraded("broker listening; its session store cannot write (disk full?), sessions are kept in memory only")
                : HealthCheckResult.Healthy("broker listening")));
    }

    sealed class StoreReady(Nightlight.Server.Storage.TelemetryStoreWriter store, ReadinessLog log) : IHealthCheck
    {
        public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default) =>
            Task.FromResult(log.Report(context, !store.Loaded.IsCompletedSuccessfully ? HealthCheckResult.Unhealthy("store not open")
                : store.Failure is { } failure ? HealthCheckResult.Unhealthy($"store writes failing ({store.Pending} writes waiting): {failure}")
                : store.Damage is { } damage ? HealthCheckResult.Degraded($"store damaged, serving what it can read: {damage}")
                : HealthCheckResult.Healthy("store open")));
    }

    sealed class ServerReady(Nightlight.Server.Ingest.MqttIngest server, ReadinessLog log) : IHealthCheck
    {
        public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default) =>
            Task.FromResult(log.Report(context, server.IsConnected ? HealthCheckResult.Healthy("connected to broker") : HealthCheckResult.Unhealthy("no broker connection")));
    }

    /// <summary>One line when a readiness check's status changes, however often it is probed; a first Healthy is not news.</summary>
    sealed class ReadinessLog(ILogger<ReadinessLog> logger)
    {
        readonly Dictionary<string, HealthStatus> _last = [];

        public HealthCheckResult Report(HealthCheckContext context, HealthCheckResult result)
        {
            var name = context.Registration.Name;
            lock (_last)
            {
                var known = _last.TryGetValue(name, out var last);
                if (known ? last == result.Status : result.Status == HealthStatus.Healthy)
                {
                    _last[name] = result.Status;
                    return result;
                }
                _last[name] = result.Status;
            }
            var level = result.Status switch
            {
                HealthStatus.Healthy => LogLevel.Information,
                HealthStatus.Degraded => LogLevel.Warning,
                _ => LogLevel.Error,
            };
            logger.Log(level, "Readiness of {Check}: {Status} ({Description})", name, result.Status, result.Description);
            return result;
        }
    }
}
