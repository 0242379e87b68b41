using System.Globalization;
using System.Net.Sockets;
using System.Text.RegularExpressions;
using Microsoft.Extensions.Options;
using Nightlight.Broker;
using Nightlight.Device;
using Nightlight.Hardware;
using Nightlight.Protocol;
using Nightlight.Security;
using Nightlight.Server;
using Nightlight.Server.Api;
using Nightlight.Server.Pipeline;
using Nightlight.Server.Storage;
using Nightlight.Web;

namespace Nightlight.Cli;

/// <summary>Which parts one process runs.</summary>
[Flags]
enum Roles
{
    Broker = 1,
    Server = 2,
    Device = 4,
    Http = 8,
    Fleet = 16,
    Bench = 32,
}

/// <summary>Builds and runs one process from the roles a command names. Exit codes: 0 done, 1 failed, 2 bad settings.</summary>
static partial class Hosts
{
    /// <summary>What <c>up</c> changes from the single-role defaults so a learner sees the lesson within seconds.</summary>
    static readonly Dictionary<string, string?> UpDefaults = new()
    {
        ["Device:Id"] = "nightlight1",
        ["Device:Interval"] = "1s",
        ["Device:DayLength"] = "40s",
    };

    /// <summary>
    /// <c>server</c> alone serves its history API on 5001, so it runs beside <c>nightlight broker</c> (5000) on one
    /// machine without flags.
    /// </summary>
    static readonly Dictionary<string, string?> ServerDefaults = new()
    {
        ["Http:Port"] = "5001",
    };

    public static async Task<int> RunAsync(Roles roles, Dictionary<string, string?> overrides, IReadOnlyDictionary<string, string> flags,
        CancellationToken cancellationToken)
    {
        IHost app;
        StartFootprint? footprint = null;
        try
        {
            app = Build(ref roles, overrides, ref footprint);
        }
        catch (Exception e) when (e is FormatException or OptionsValidationException or InvalidOperationException)
        {
            footprint?.RemoveWhatStartCreated();
            return BadSettings(e, new SettingNames(flags, key => overrides.GetValueOrDefault(key)));
        }

        var started = false;
        try
        {
            await app.StartAsync(cancellationToken);
            started = true;
            if (!roles.HasFlag(Roles.Bench))
            {
                Announce(app, roles);
            }
            await app.WaitForShutdownAsync(cancellationToken);
            return StoppedByFault(app) is { } fault ? Fail(1, fault) : Environment.ExitCode;
        }
        catch (Exception e) when (e is OptionsValidationException or FormatException)
        {
            var config = app.Services.GetRequiredService<IConfiguration>();
            return BadSettings(e, new SettingNames(flags, key => config[key]));
        }
        catch (Exception e) when (PortInUse(e) is { } port)
        {
            var flag = roles.HasFlag(Roles.Broker) && port == app.Services.GetRequiredService<IOptions<BrokerOptions>>().Value.MqttPort
                ? "--mqtt-port" : "--http-port";
            return Fail(1, $"port {port} is already in use; choose another with {flag}");
        }
        catch (Exception e) when (!cancellationToken.IsCancellationRequested)
        {
            // A part that could not start (a store that cannot be opened, ...): one line saying why, never a stack trace.
            return Fail(1, e.Message);
        }
        finally
        {
            if (app is IAsyncDisposable disposable)
            {
                await disposable.DisposeAsync();
            }
            else
            {
                app.Dispose();
            }
            if (!started && !cancellationToken.IsCancellationRequested)
            {
                footprint?.RemoveWhatStartCreated();
            }
        }
    }

    /// <summary>One line per bad setting, naming the flag (or the configuration key), the value and what is allowed; exit 2.</summary>
    static int BadSettings(Exception e, SettingNames names)
    {
        var failures = e is OptionsValidationException validation
            ? validation.Failures.Select(failure => names.Explain(failure, validation.OptionsType.Name))
            : [names.Explain(e.Message, null)];
        foreach (var failure in failures.Distinct())
        {
            Console.Error.WriteLine($"error: {failure}");
        }
        return 2;
    }

    /// <summary>
    /// Why the host stopped, when a background part failed: the host then stops, and without this line the command
    /// would end with exit code 0 and no word (the host's own error line is not shown at the default log levels).
    /// </summary>
    static string? StoppedByFault(IHost app)
    {
        foreach (var service in app.Services.GetServices<IHostedService>().OfType<BackgroundService>())
        {
            if (service.ExecuteTask is { IsFaulted: true } task)
            {
                var error = task.Exception.InnerException ?? task.Exception;
                return $"{service.GetType().Name} stopped: {error.Message}";
            }
        }
        return null;
    }

    static int Fail(int code, string message)
    {
        Console.Error.WriteLine($"error: {message}");
        return code;
    }

    /// <summary>
    /// <c>Server:InlineSocketCompletions</c>: before any socket is made, so .NET's socket engine reads it when it starts.
    /// With .NET's default, each socket completion wakes a thread-pool worker after the engine's thread; at thousands
    /// of readings a second those wake-ups cost the server a quarter of its CPU and, on a small machine, preempted a
    /// broker sharing it (docs/benchmarks/server-round-trips.md#inline-socket-completions).
    /// </summary>
    static void RunSocketCompletionsInline(IConfiguration config)
    {
        var server = Bound<ServerOptions>(config, ServerOptions.Section);
        var storage = Bound<StorageOptions>(config, StorageOptions.Section);
        var onlyLightSockets = !server.IngestsFromAmqp && !storage.UsesPostgres;
        if ((server.InlineSocketCompletions ?? onlyLightSockets) && Environment.GetEnvironmentVariable(ServerOptions.InlineCompletionsVariable) is null)
        {
            Environment.SetEnvironmentVariable(ServerOptions.InlineCompletionsVariable, "1");
        }
    }

    /// <summary>A PostgreSQL connection string that cannot be read is a bad setting, not a stack trace from the store.</summary>
    static void CheckConnectionString(StorageOptions storage)
    {
        if (!storage.UsesPostgres || string.IsNullOrEmpty(storage.ConnectionString))
        {
            return;
        }
        try
        {
            _ = new Npgsql.NpgsqlConnectionStringBuilder(storage.ConnectionString);
        }
        catch (ArgumentException)
        {
            throw new FormatException($"Storage:ConnectionString '{storage.ConnectionString}' is not a PostgreSQL connection string; " +
                "say Host=localhost;Username=nightlight;Password=SECRET;Database=nightlight");
        }
    }

    /// <summary>A section as its options class sees it, for the few settings needed before the services exist.</summary>
    static T Bound<T>(IConfiguration config, string section) where T : class, new() => config.GetSection(section).Get<T>() ?? new T();

    /// <summary>
    /// <c>up --type thermostat</c>: the server heats the room its own device measures, on below the set point less half a
    /// degree and off at or above it plus half a degree, unless the user gave that device a rule of its own.
    /// </summary>
    static void ThermostatRule(IConfigurationManager config)
    {
        var device = Bound<DeviceHostOptions>(config, DeviceHostOptions.Section);
        if (device.Type != "thermostat" || string.IsNullOrEmpty(device.Id) || config.GetSection($"Rules:Devices:{device.Id}").Exists())
        {
            return;
        }
        var rule = $"Rules:Devices:{device.Id}:";
        config.AddInMemoryCollection(new Dictionary<string, string?>
        {
            [rule + "Measurement"] = "temperature",
            [rule + "Switch"] = CommandMessage.Heating,
            [rule + "On"] = (device.SetPoint - 0.5).ToString(CultureInfo.InvariantCulture),
            [rule + "Off"] = (device.SetPoint + 0.5).ToString(CultureInfo.InvariantCulture),
            [rule + "Answer"] = "changes",
        });
    }

    static IHost Build(ref Roles roles, Dictionary<string, string?> overrides, ref StartFootprint? footprint)
    {
        // Only roles that listen get a web server; a device or a server alone opens no port.
        var web = roles.HasFlag(Roles.Http) || roles.HasFlag(Roles.Broker);
        IHostApplicationBuilder builder = web
            ? WebApplication.CreateEmptyBuilder(new WebApplicationOptions { ContentRootPath = AppContext.BaseDirectory })
            : Host.CreateEmptyApplicationBuilder(new HostApplicationBuilderSettings { ContentRootPath = AppContext.BaseDirectory });
        var config = builder.Configuration;
        config.AddJsonFile(Path.Combine(AppContext.BaseDirectory, "appsettings.json"), optional: true);
        if (roles.HasFlag(Roles.Broker) && roles.HasFlag(Roles.Device))
        {
            config.AddInMemoryCollection(UpDefaults);
            if (!Console.IsErrorRedirected)
            {
                // A learner's terminal shows the lesson: the banner already says what the start-up info lines say.
                config.AddInMemoryCollection(new Dictionary<string, string?> { ["Logging:LogLevel:Default"] = "Warning" });
            }
        }
        if (roles.HasFlag(Roles.Server) && !roles.HasFlag(Roles.Broker))
        {
            config.AddInMemoryCollection(ServerDefaults);
        }
        // A user's own settings: nightlight.json in the working directory (not appsettings.json, which is ours).
        config.AddJsonFile(Path.Combine(Directory.GetCurrentDirectory(), "nightlight.json"), optional: true);
        config.AddEnvironmentVariables("NIGHTLIGHT_");
        config.AddInMemoryCollection(overrides);
        // Noted before anything below opens the data directory (the store, identities, a device's state).
        footprint = new StartFootprint(config);
        if (roles.HasFlag(Roles.Server) && !roles.HasFlag(Roles.Broker))
        {
            RunSocketCompletionsInline(config);
        }
        if (roles.HasFlag(Roles.Server))
        {
            CheckConnectionString(Bound<StorageOptions>(config, StorageOptions.Section));
        }
        if (roles.HasFlag(Roles.Device) && roles.HasFlag(Roles.Server))
        {
            ThermostatRule(config);
        }
        if (roles.HasFlag(Roles.Device) && roles.HasFlag(Roles.Broker) && !Bound<DeviceHostOptions>(config, DeviceHostOptions.Section).Enabled)
        {
            // `up --no-device`: broker, server and dashboard for real devices (and for `bench --broker inproc`).
            roles &= ~Roles.Device;
        }
        if (roles.HasFlag(Roles.Broker))
        {
            // Clients in the same process talk to the embedded broker, whatever the configuration says elsewhere.
            var local = $"mqtt://127.0.0.1:{Bound<BrokerOptions>(config, BrokerOptions.Section).MqttPort}";
            config.AddInMemoryCollection(new Dictionary<string, string?> { ["Server:Broker"] = local, ["Device:Broker"] = local });
            // ...and authenticate with a secret that lives only in this process's memory.
            var inProcess = Convert.ToHexString(System.Security.Cryptography.RandomNumberGenerator.GetBytes(32));
            config.AddInMemoryCollection(new Dictionary<string, string?>
            {
                ["Broker:InProcessSecret"] = inProcess,
                ["Server:Username"] = Nightlight.Security.AccessPolicy.InProcessUserName,
                ["Server:Password"] = inProcess,
                ["Device:Username"] = Nightlight.Security.AccessPolicy.InProcessUserName,
                ["Device:Password"] = inProcess,
            });
        }

        builder.Logging.AddConfiguration(config.GetSection("Logging"));
        AddConsole(builder.Logging);
        // Wide enough for "server → ID" of the device `up` runs, so the bar lines up from the first line.
        var output = new LessonOutput(Console.Out, roles.HasFlag(Roles.Device) ? $"server → {config["Device:Id"]}".Length : 0);
        builder.Services.AddSingleton(output);
        builder.Services.AddSingleton<ILessonLog>(output);

        var http = roles.HasFlag(Roles.Http);
        // One virtual board per process: the device reads and switches it, the /hardware page and the CounterFit API drive it.
        // Its light comes from the Device section in every role; the section is validated only where a device runs.
        builder.Services.AddOptions<DeviceHostOptions>().BindConfiguration(DeviceHostOptions.Section);
        builder.Services.AddSingleton(sp =>
        {
            var device = sp.GetRequiredService<IOptions<DeviceHostOptions>>().Value;
            return VirtualBoard.CreateNightlight(device.Light, Durations.Parse(device.DayLength, "Device:DayLength"));
        });
        if (builder is WebApplicationBuilder webBuilder)
        {
            builder.Services.AddOptions<HttpOptions>().BindConfiguration(HttpOptions.Section);
            webBuilder.WebHost.UseKestrelCore().ConfigureKestrel(kestrel =>
            {
                if (http)
                {
                    var o = kestrel.ApplicationServices.GetRequiredService<IOptions<HttpOptions>>().Value;
                    // Port 0 (any free port, for tests and scripts) cannot be combined with the name localhost.
                    if (o.Port == 0 && o.Bind == "localhost")
                    {
                        kestrel.Listen(System.Net.IPAddress.Loopback, 0);
                    }
                    else
                    {
                        kestrel.Listen(o.Bind, o.Port);
                    }
                }
            });
            builder.Services.AddRouting();
            if (http)
            {
                builder.AddNightlightObservability(roles);
                builder.Services.AddNightlightToken();
            }
            if (roles.HasFlag(Roles.Broker))
            {
                webBuilder.AddEmbeddedBroker();
            }
            // The dashboard (with its own live feed) comes with the broker (up, broker); `server` alone serves the
            // history API only, so its log keeps one line per bad message.
            if (http && roles.HasFlag(Roles.Broker))
            {
                webBuilder.AddNightlightWeb();
            }
        }
        if (roles.HasFlag(Roles.Server))
        {
            builder.AddNightlightServer();
            if (http)
            {
                builder.AddDeviceApi();
            }
            builder.AddTerminalStatus(output);
            var withPrompt = roles.HasFlag(Roles.Device);
            builder.Services.AddHostedService(sp => new OverrideLines(sp.GetRequiredService<Nightlight.Server.Commands.ManualOverrides>(), output, withPrompt));
        }
        if (roles.HasFlag(Roles.Device))
        {
            builder.Services.AddOptions<DeviceHostOptions>().ValidateDataAnnotations().ValidateOnStart();
            builder.Services.AddSingleton(sp => NightlightHardware.Select(sp.GetRequiredService<IOptions<DeviceHostOptions>>().Value.Hardware,
                sp.GetRequiredService<VirtualBoard>));
            builder.Services.AddSingleton(new TerminalPrompt(output));
            builder.Services.AddHostedService<DeviceService>();
        }

        if (roles.HasFlag(Roles.Bench))
        {
            builder.Services.AddOptions<Bench.BenchOptions>().BindConfiguration(Bench.BenchOptions.Section).ValidateDataAnnotations().ValidateOnStart();
            builder.Services.AddHostedService<Bench.BenchService>();
        }
        if (roles.HasFlag(Roles.Fleet))
        {
            builder.Services.AddOptions<FleetOptions>().BindConfiguration(FleetOptions.Section).ValidateDataAnnotations().ValidateOnStart();
            builder.Services.AddHostedService<FleetService>();
        }

        if (builder is not WebApplicationBuilder webApplicationBuilder)
        {
            return ((HostApplicationBuilder)builder).Build();
        }
        var app = webApplicationBuilder.Build();
        if (http)
        {
            app.UseBadRequestLog();
            app.UseNightlightHostCheck();
            app.UseWebSockets();
            app.UseRouting();
            if (roles.HasFlag(Roles.Broker))
            {
                app.MapEmbeddedBroker();
            }
            app.MapNightlightObservability();
            if (roles.HasFlag(Roles.Server))
            {
                app.MapDeviceApi();
            }
            if (roles.HasFlag(Roles.Broker))
            {
                app.MapNightlightWeb();
            }
        }
        return app;
    }

    static void Announce(IHost app, Roles roles)
    {
        var services = app.Services;
        T Options<T>() where T : class => services.GetRequiredService<IOptions<T>>().Value;
        var lines = new List<string>();
        if (roles.HasFlag(Roles.Broker))
        {
            var broker = Options<BrokerOptions>();
            lines.Add($"MQTT broker    mqtt://{broker.Bind}:{broker.MqttPort}");
            if (services.GetRequiredService<BrokerTls>() is { Port: { } tlsPort } tls)
            {
                lines.Add($"MQTT over TLS  mqtts://{broker.Bind}:{tlsPort}");
                if (tls.DevelopmentCertificatePem is { } pem)
                {
                    lines.Add($"               {(tls.DevelopmentCertificateCreated ? "made a" : "using the")} self-signed development certificate; clients must trust {pem}");
                    lines.Add($"               e.g. mosquitto_sub -h localhost -p {tlsPort} --cafile {pem} -t '+/telemetry'");
                }
            }
        }
        if (roles.HasFlag(Roles.Http))
        {
            var httpOptions = Options<HttpOptions>();
            var host = httpOptions.Bind;
            var port = httpOptions.Port;
            // With port 0 the real port is known only now; scripts and tests read it from this line.
            var bound = services.GetService<Microsoft.AspNetCore.Hosting.Server.IServer>()?.Features
                .Get<Microsoft.AspNetCore.Hosting.Server.Features.IServerAddressesFeature>()?.Addresses.FirstOrDefault();
            if (port == 0 && bound is not null)
            {
                port = new Uri(bound).Port;
            }
            if (roles.HasFlag(Roles.Broker))
            {
                lines.Add($"Dashboard      http://{host}:{port}/   virtual hardware at /hardware, MQTT over WebSocket at /mqtt");
                if (services.GetRequiredService<BrokerTls>() is { HttpsPort: { } httpsPort })
                {
                    lines.Add($"HTTPS          https://{host}:{httpsPort}/   MQTT over secure WebSocket at wss://{host}:{httpsPort}/mqtt");
                }
            }
            if (services.GetRequiredService<Nightlight.Security.HttpToken>() is { Required: true } token)
            {
                lines.Add($"               changes over HTTP need 'Authorization: Bearer TOKEN'{(token.File is { } file ? $", the token is in {file}" : " (Http:Token)")}");
            }
            if (roles.HasFlag(Roles.Server))
            {
                lines.Add($"History API    http://{host}:{port}/api/devices   OpenAPI at /openapi/v1.json");
            }
        }
        if (roles.HasFlag(Roles.Server))
        {
            var server = Options<ServerOptions>();
            var rules = services.GetRequiredService<ReadingPipeline>().RuleDescription;
            lines.Add($"Server         {(string.IsNullOrEmpty(server.Id) ? "every device" : $"device {server.Id}")}, {rules}, broker {server.Broker}" +
                (string.IsNullOrEmpty(server.SharedSubscriptionGroup) ? "" : $", sharing telemetry in group {server.SharedSubscriptionGroup}"));
            var store = services.GetRequiredService<ITelemetryStore>();
            lines.Add($"Storage        {store.Provider} {store.Location}");
        }
        if (roles.HasFlag(Roles.Fleet))
        {
            var fleet = Options<FleetOptions>();
            lines.Add($"Fleet          {fleet.Devices} devices, a reading every {fleet.Interval} each, broker {fleet.Broker}");
        }
        if (roles.HasFlag(Roles.Device))
        {
            var device = Options<DeviceHostOptions>();
            var light = !string.IsNullOrEmpty(device.Hardware) ? $"and LED from the hardware at {device.Hardware}"
                : device.Light is { } level ? $"held at {Wire.FormatNumber(level)}"
                : $"follows a {device.DayLength} day/night curve";
            lines.Add($"Device         {device.Id}, a reading every {device.Interval}, light {light}, " +
                (device.Transport == "http" ? $"over HTTP to {device.Server}" : $"broker {device.Broker}"));
            lines.Add("               type a light level (0-1023) and Enter to change it, 'curve' to follow the day again");
        }
        lines.Add("Press Ctrl+C to stop.");
        var output = services.GetRequiredService<LessonOutput>();
        foreach (var line in lines)
        {
            output.Say("nightlight", line);
        }
    }

    static int? PortInUse(Exception e)
    {
        for (var inner = e; inner is not null; inner = inner.InnerException)
        {
            if (inner is SocketException { SocketErrorCode: SocketError.AddressAlreadyInUse } ||
                inner.Message.Contains("address already in use", StringComparison.OrdinalIgnoreCase))
            {
                var match = PortPattern().Match(e.Message + " " + inner.Message);
                return match.Success ? int.Parse(match.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture) : 0;
            }
        }
        return null;
    }

    [GeneratedRegex(@":(\d{1,5})\b")]
    private static partial Regex PortPattern();

    /// <summary>One line per entry with the time, on standard error: standard output carries only the lesson's lines (or an export's CSV).</summary>
    public static void AddConsole(ILoggingBuilder logging)
    {
        logging.AddConsole(o => o.FormatterName = TerminalLogFormatter.FormatterName);
        logging.AddConsoleFormatter<TerminalLogFormatter, Microsoft.Extensions.Logging.Console.ConsoleFormatterOptions>();
        logging.Services.Configure<Microsoft.Extensions.Logging.Console.ConsoleLoggerOptions>(o => o.LogToStandardErrorThreshold = LogLevel.Trace);
    }

    /// <summary>Logging for a command that runs without a host (export, storage-bench): the store's own lines, such as an upgrade of its file.</summary>
    public static ILoggerFactory CommandLoggers() => LoggerFactory.Create(AddConsole);
}
