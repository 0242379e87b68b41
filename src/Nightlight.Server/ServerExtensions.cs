using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Nightlight.Server.Commands;
using Nightlight.Server.Ingest;
using Nightlight.Server.Pipeline;
using Nightlight.Server.Rules;
using Nightlight.Server.Storage;
using Nightlight.Server.Storage.Postgres;
using Nightlight.Server.Storage.Sqlite;

namespace Nightlight.Server;

public static class ServerExtensions
{
    /// <summary>
    /// Registers the server: options from sections <c>Server</c>, <c>Rules</c>, <c>Commands</c>, the telemetry store
    /// (<see cref="AddTelemetryStore"/>), the device registry, the link to the broker, the command sender, the reading
    /// pipeline and the ingest paths (MQTT, and AMQP when <c>Server:Ingest</c> says so).
    /// </summary>
    public static IHostApplicationBuilder AddNightlightServer(this IHostApplicationBuilder builder)
    {
        builder.Services.AddOptions<ServerOptions>().BindConfiguration(ServerOptions.Section).ValidateDataAnnotations().ValidateOnStart();
        builder.Services.AddOptions<RulesOptions>().BindConfiguration(RulesOptions.Section);
        builder.Services.AddOptions<CommandOptions>().BindConfiguration(CommandOptions.Section).ValidateDataAnnotations().ValidateOnStart();
        builder.Services.AddSingleton<ServerMetrics>();
        builder.Services.AddSingleton<DeviceRegistry>();
        builder.AddTelemetryStore();
        // Made once; the MQTT ingest starts and closes it, the command sender publishes on it.
        builder.Services.AddSingleton<ServerLink>();
        builder.Services.AddSingleton<ManualOverrides>();
        builder.Services.AddSingleton<CommandSender>();
        builder.Services.AddHostedService(sp => sp.GetRequiredService<CommandSender>());
        builder.Services.AddHostedService<StoredAckPublisher>();
        builder.Services.AddSingleton<ReadingPipeline>();
        builder.Services.AddSingleton<MqttIngest>();
        builder.Services.AddHostedService(sp => sp.GetRequiredService<MqttIngest>());
        // After the MQTT ingest: stops first, so no reading is handed to a pipeline that has closed.
        builder.Services.AddOptions<AmqpIngestOptions>().BindConfiguration(AmqpIngestOptions.Section).ValidateDataAnnotations().ValidateOnStart();
        builder.Services.AddHostedService<AmqpIngest>();
        return builder;
    }

    /// <summary>
    /// The store stage: SQLite in <c>Data:Directory</c>, or PostgreSQL when <c>Storage:Provider</c> or
    /// <c>Storage:ConnectionString</c> says so; the batching writer and the retention loop.
    /// </summary>
    public static IHostApplicationBuilder AddTelemetryStore(this IHostApplicationBuilder builder)
    {
        builder.Services.AddOptions<StorageOptions>().BindConfiguration(StorageOptions.Section).ValidateDataAnnotations()
            .Validate(o => !o.UsesPostgres || !string.IsNullOrEmpty(o.ConnectionString), "Storage:ConnectionString is required for PostgreSQL")
            .Validate(o => string.IsNullOrEmpty(o.Retention) || o.Retention == "0" || Protocol.Durations.TryParse(o.Retention, out _),
                "Storage:Retention is not a duration with a unit; say 30d, 30h or 30m (0 keeps all)")
            .ValidateOnStart();
        builder.Services.AddOptions<DataOptions>().BindConfiguration(DataOptions.Section);
        builder.Services.AddSingleton(sp => CreateStore(sp.GetRequiredService<IOptions<StorageOptions>>().Value,
            sp.GetRequiredService<IOptions<DataOptions>>().Value, sp.GetService<ILoggerFactory>()));
        builder.Services.AddSingleton<TelemetryStoreWriter>();
        builder.Services.AddHostedService(sp => sp.GetRequiredService<TelemetryStoreWriter>());
        builder.Services.AddHostedService<RetentionService>();
        return builder;
    }

    /// <summary>The SQLite store's file in the data directory.</summary>
    public const string SqliteFileName = "nightlight.db";

    /// <summary>Opens the configured store; the caller owns it.</summary>
    public static ITelemetryStore CreateStore(StorageOptions storage, DataOptions data, ILoggerFactory? loggers = null)
    {
        if (storage.UsesPostgres)
        {
            return new PostgresTelemetryStore(storage.ConnectionString!);
        }
        Security.DataDirectory.CreatePrivate(data.Directory);
        return new SqliteTelemetryStore(Path.Combine(Path.GetFullPath(data.Directory), SqliteFileName), loggers?.CreateLogger<SqliteTelemetryStore>());
    }

    /// <summary>The store as configured, for commands that read it without running a server (export).</summary>
    public static ITelemetryStore CreateStore(IConfiguration configuration, ILoggerFactory? loggers = null)
    {
        var storage = configuration.GetSection(StorageOptions.Section).Get<StorageOptions>() ?? new StorageOptions();
        var data = configuration.GetSection(DataOptions.Section).Get<DataOptions>() ?? new DataOptions();
        return CreateStore(storage, data, loggers);
    }
}
