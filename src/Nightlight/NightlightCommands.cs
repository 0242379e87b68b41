using System.CommandLine;
using System.Globalization;

namespace Nightlight.Cli;

/// <summary>
/// The CLI contract. Every flag is a configuration key (the second argument of <see cref="Flag{T}"/>): a flag given
/// on the command line overrides appsettings.json and environment variables, an absent one leaves them alone.
/// </summary>
static class NightlightCommands
{
    sealed record FlagSpec(Option Option, string Key, Func<ParseResult, string?> Read);

    static Option<T> Flag<T>(List<FlagSpec> flags, string name, string key, string description)
    {
        var option = new Option<T>(name) { Description = description };
        if (typeof(T) == typeof(int?) || typeof(T) == typeof(double?))
        {
            // System.CommandLine's own message names the CLR type (System.Nullable`1[System.Double]).
            option.CustomParser = result =>
            {
                var text = result.Tokens.Count == 1 ? result.Tokens[0].Value : "";
                var whole = typeof(T) == typeof(int?);
                if (whole && int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var i))
                {
                    return (T)(object)i;
                }
                if (!whole && double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var d) && double.IsFinite(d))
                {
                    return (T)(object)d;
                }
                result.AddError($"{name} '{text}' is not {(whole ? "a whole number" : "a number")}");
                return default;
            };
        }
        flags.Add(new FlagSpec(option, key, parse => Format(parse.GetValue(option))));
        return option;
    }

    static string? Format(object? value) => value switch
    {
        null => null,
        bool b => b ? "true" : "false",
        IFormattable f => f.ToString(null, CultureInfo.InvariantCulture),
        _ => value.ToString(),
    };

    static Command Create(string name, string description, Roles roles, Action<List<FlagSpec>> addFlags)
    {
        var flags = new List<FlagSpec>();
        addFlags(flags);
        var command = new Command(name, description);
        var flagNames = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
        foreach (var flag in flags)
        {
            command.Options.Add(flag.Option);
            flagNames.TryAdd(flag.Key, flag.Option.Name);
        }
        command.SetAction((parse, cancellationToken) =>
        {
            var overrides = new Dictionary<string, string?>(StringComparer.OrdinalIgnoreCase);
            foreach (var flag in flags)
            {
                var result = parse.GetResult(flag.Option);
                if (result is null || result.Implicit)
                {
                    continue;
                }
                overrides[flag.Key] = flag.Read(parse);
            }
            return Hosts.RunAsync(roles, overrides, flagNames, cancellationToken);
        });
        return command;
    }

    static void MqttPort(List<FlagSpec> f) => Flag<int?>(f, "--mqtt-port", "Broker:MqttPort", "MQTT over TCP port of the embedded broker (default 1883)");
    static void HttpPort(List<FlagSpec> f)
    {
        Flag<int?>(f, "--http-port", "Http:Port", "HTTP port: MQTT over WebSocket at /mqtt and the web pages (default 5000)");
        Flag<int?>(f, "--https-port", "Http:HttpsPort", "Also serve HTTPS on this port: the pages and MQTT over secure WebSocket (wss) at /mqtt, with the TLS listener's certificate");
    }
    static void NoStatus(List<FlagSpec> f)
    {
        // The one flag that says "not": --no-status sets Output:Status to false.
        var option = new Option<bool>("--no-status") { Description = "No live status line at the bottom of the terminal (plain lines only)" };
        f.Add(new FlagSpec(option, "Output:Status", parse => parse.GetValue(option) ? "false" : "true"));
    }

    static void NoDevice(List<FlagSpec> f)
    {
        var option = new Option<bool>("--no-device") { Description = "No virtual nightlight: only the broker, the server and the dashboard, for real devices" };
        f.Add(new FlagSpec(option, "Device:Enabled", parse => parse.GetValue(option) ? "false" : "true"));
    }

    static void Bind(List<FlagSpec> f)
    {
        Flag<string?>(f, "--bind", "Broker:Bind", "Address the broker listens on: localhost (default) or an IP address");
    }

    static void Security(List<FlagSpec> f)
    {
        Flag<string?>(f, "--data", "Data:Directory", "Data directory: identities, development certificate (default ./nightlight-data)");
        Flag<bool?>(f, "--allow-anonymous", "Broker:AllowAnonymous", "Accept clients without credentials even when not on loopback (prints a warning)");
        Flag<bool?>(f, "--tls", "Broker:Tls", "Also listen for MQTT over TLS (port 8883 unless --tls-port)");
        Flag<int?>(f, "--tls-port", "Broker:TlsPort", "MQTT over TLS port (turns TLS on)");
        Flag<int?>(f, "--max-connect-rate", "Broker:MaxConnectRate", "New connections a second per remote address before more are closed (default 100, loopback exempt; 0: no limit)");
        Flag<int?>(f, "--max-publish-rate", "Broker:MaxPublishRate", "PUBLISH packets a second per client before it is slowed down (default 1000, 0: no limit)");
    }

    static void Credentials(List<FlagSpec> f, string section)
    {
        Flag<string?>(f, "--username", section + ":Username", "User name for a broker that authenticates (see nightlight devices)");
        var password = new Option<string?>("--password") { Description = "Password (the identity's secret); other local users can read it in the process list, prefer --password-file" };
        f.Add(new FlagSpec(password, section + ":Password", parse => SecretFlags.WarnOnFlag("--password", $"NIGHTLIGHT_{section}__Password", parse.GetValue(password))));
        var file = new Option<string?>("--password-file") { Description = $"File holding the password (or the environment variable NIGHTLIGHT_{section}__Password)" };
        f.Add(new FlagSpec(file, section + ":Password", parse => SecretFlags.ReadFile(parse.GetValue(file)!)));
    }

    public static Command Up() => Create("up", "Run everything in one process: embedded broker, a virtual nightlight and the server.",
        Roles.Broker | Roles.Server | Roles.Device | Roles.Http, f =>
        {
            MqttPort(f);
            HttpPort(f);
            Flag<string?>(f, "--data", "Data:Directory", "Data directory (default ./nightlight-data)");
            Flag<string?>(f, "--database", "Storage:ConnectionString", "PostgreSQL connection string; stores there instead of SQLite");
            Flag<string?>(f, "--id", "Device:Id", "Id of the virtual nightlight (default nightlight1)");
            Flag<double?>(f, "--threshold", "Server:Threshold", "Light level below which the LED goes on (default 300)");
            Flag<string?>(f, "--interval", "Device:Interval", "Time between readings, for example 200ms, 2s (default 1s)");
            Flag<double?>(f, "--light", "Device:Light", "Hold the light at this level, 0-1023 (default: follow a day/night curve)");
            Flag<string?>(f, "--day-length", "Device:DayLength", "Length of one simulated day and night (default 40s)");
            Flag<string?>(f, "--type", "Device:Type", "Device type: nightlight (light, LED; default) or thermostat (temperature, heater; the server heats below --set-point)");
            Flag<double?>(f, "--temperature", "Device:Temperature", "Thermostat: hold the temperature at this many °C");
            Flag<double?>(f, "--set-point", "Device:SetPoint", "Thermostat: the server heats below this many °C less 0.5, stops at it plus 0.5 (default 20)");
            Flag<bool?>(f, "--quiet", "Server:Quiet", "Do not print the server's lesson lines");
            NoStatus(f);
            NoDevice(f);
        });

    public static Command Broker() => Create("broker", "Run the embedded MQTT broker alone (TCP, and WebSocket at /mqtt on the HTTP port).",
        Roles.Broker | Roles.Http, f =>
        {
            MqttPort(f);
            HttpPort(f);
            Bind(f);
            Security(f);
        });

    public static Command Server() => Create("server", "Run the server: answer each device's telemetry with an LED command, store it, serve its history.",
        Roles.Server | Roles.Http, f =>
        {
            Flag<int?>(f, "--http-port", "Http:Port", "HTTP port of the history API and OpenAPI document (default 5001; 0 picks a free port)");
            Flag<string?>(f, "--data", "Data:Directory", "Data directory for the SQLite store (default ./nightlight-data)");
            Flag<string?>(f, "--database", "Storage:ConnectionString", "PostgreSQL connection string; stores there instead of SQLite");
            Flag<string?>(f, "--retention", "Storage:Retention", "Delete readings older than this, for example 7d (default 30d; 0 keeps all)");
            Flag<string?>(f, "--share", "Server:SharedSubscriptionGroup", "Share telemetry with other servers in this MQTT 5 shared subscription group");
            Flag<string?>(f, "--broker", "Server:Broker", "Broker address, mqtt://HOST:PORT (default mqtt://localhost:1883)");
            Flag<string?>(f, "--id", "Server:Id", "Serve only this device (default: every device, +/telemetry)");
            Flag<double?>(f, "--threshold", "Server:Threshold", "Light level below which the LED goes on (default 300)");
            Flag<bool?>(f, "--quiet", "Server:Quiet", "Do not print a line per message (for fleets)");
            Flag<string?>(f, "--protocol", "Server:Protocol", "MQTT protocol: auto (5, falling back to 3.1.1), 3.1.1 or 5");
            Flag<string?>(f, "--ingest", "Server:Ingest", "Where telemetry comes from: mqtt (default) or amqp (a RabbitMQ queue shared by all servers)");
            Flag<string?>(f, "--amqp", "Server:Amqp:Uri", "RabbitMQ AMQP address(es) for --ingest amqp, amqp://USER:PASS@HOST:5672/ (comma-separated nodes)");
            Credentials(f, "Server");
            NoStatus(f);
        });

    public static Command Device() => Create("device", "Run a virtual nightlight: a light sensor and an LED. Type a number to set the light.",
        Roles.Device, f =>
        {
            Flag<string?>(f, "--broker", "Device:Broker", "Broker address, mqtt://HOST:PORT (default mqtt://localhost:1883)");
            Flag<string?>(f, "--id", "Device:Id", "Device id (required): topics {id}/telemetry and {id}/commands");
            Flag<string?>(f, "--interval", "Device:Interval", "Time between readings, for example 200ms, 2s (default 5s)");
            Flag<double?>(f, "--light", "Device:Light", "Hold the light at this level, 0-1023 (default: follow a day/night curve)");
            Flag<string?>(f, "--day-length", "Device:DayLength", "Length of one simulated day and night (default 2m)");
            Flag<bool?>(f, "--quiet", "Device:Quiet", "Do not print a line per message");
            Flag<string?>(f, "--hardware", "Device:Hardware", "Use a CounterFit-compatible app as hardware, http://HOST:PORT (light on port 0, LED on port 5)");
            Flag<string?>(f, "--protocol", "Device:Protocol", "MQTT protocol: auto (5, falling back to 3.1.1), 3.1.1 or 5");
            Flag<string?>(f, "--transport", "Device:Transport", "mqtt (default, through --broker) or http (straight to --server; see docs/protocols.md)");
            Flag<string?>(f, "--server", "Device:Server", "Server address for --transport http, http://HOST:PORT (default http://localhost:5000)");
            DeviceSdkFlags(f, withData: true);
            Credentials(f, "Device");
            Flag<string?>(f, "--cert", "Device:CertificateFile", "Client certificate (PEM, from 'nightlight devices add ID --cert'); connects over TLS");
            Flag<string?>(f, "--key", "Device:KeyFile", "Private key (PEM) of --cert");
            Flag<string?>(f, "--cafile", "Device:CaFile", "CA certificate (PEM) the broker's TLS certificate must chain to, e.g. nightlight-data/dev-broker.pem (turns TLS on)");
            Flag<bool?>(f, "--tls", "Device:Tls", "Speak TLS to the broker, trusting the system's certificate store unless --cafile");
            Flag<string?>(f, "--fallback-after", "Device:FallbackAfter", "Decide locally after this long without a connection, for example 10s (default: never)");
            Flag<string?>(f, "--fallback-silence", "Device:FallbackSilence", "Decide locally after this long connected without a command (default: never)");
            Flag<double?>(f, "--threshold", "Device:Threshold", "Local rule of the nightlight: LED on below this light level (default 300)");
            Flag<double?>(f, "--set-point", "Device:SetPoint", "Local rule of the thermostat: heating on below this many °C (default 20)");
        });

    /// <summary>The device SDK's settings: offline policy, QoS, data directory, device type.</summary>
    static void DeviceSdkFlags(List<FlagSpec> f, bool withData)
    {
        Flag<string?>(f, "--type", "Device:Type", "Device type: nightlight (light, LED; default) or thermostat (temperature, heater)");
        Flag<string?>(f, "--offline", "Device:Offline", "While offline: drop readings (default), keep the latest, or keep all on disk and replay them");
        Flag<int?>(f, "--qos", "Device:Qos", "Telemetry QoS 0, 1 or 2 (default: 1 with --offline all, else 0)");
        if (withData)
        {
            Flag<string?>(f, "--data", "Data:Directory", "Data directory: the device keeps its seq, outbox and command state in DIR/devices/ID (default ./nightlight-data)");
        }
        Flag<string?>(f, "--sync", "Device:Sync", "Outbox fsync policy: always (default), interval (once a second) or never");
        Flag<double?>(f, "--temperature", "Device:Temperature", "Thermostat: hold the temperature at this many °C");
    }

    public static Command Bench() => Create("bench", "Measure round trips telemetry → broker → server → command → device, ours beside baselines.",
        Roles.Bench, f =>
        {
            Flag<string?>(f, "--broker", "Bench:Broker", "embedded (start nightlight broker, the default), inproc (start nightlight up --no-device: broker and our server in one process), mosquitto (start Mosquitto), a list of those (embedded,mosquitto: each in turn, one table) or mqtt://HOST:PORT (comma-separated cluster nodes)");
            Flag<int?>(f, "--broker-pid", "Bench:BrokerPid", "Process id of an external broker on this machine, to report its CPU and memory");
            Flag<int?>(f, "--idle", "Bench:Idle", "Open this many idle connections instead (to each of --broker embedded,mosquitto) and report connect time and broker memory per connection");
            Flag<int?>(f, "--devices", "Bench:Devices", "Simulated devices, each with its own connection (default 1000)");
            Flag<double?>(f, "--rate", "Bench:Rate", "Readings per second offered by the whole fleet (default 20000)");
            Flag<string?>(f, "--duration", "Bench:Duration", "Measured time per server (default 20s)");
            Flag<string?>(f, "--warmup", "Bench:Warmup", "Unmeasured time before it, 0 for none (default 3s)");
            Flag<string?>(f, "--servers", "Bench:Servers", "Servers to compare: ours,lesson,naive, or external (already running) (default ours)");
            Flag<int?>(f, "--rounds", "Bench:Rounds", "Measure the servers in turn this many times, then give each one's median and worst (default 1)");
            Flag<string?>(f, "--json", "Bench:Json", "Also write the results to this JSON file");
            Flag<int?>(f, "--flip-every", "Bench:FlipEvery", "Readings per device between light changes; 1 changes the LED on every answer (default 10)");
            Flag<string?>(f, "--answer", "Bench:Answer", "every (the lesson, the default) or changes: our server answers only readings that change a LED and stores the rest");
            Flag<string?>(f, "--stored-acks", "Bench:StoredAcks", "on or off: numbered readings, with or without the server's {id}/stored acknowledgements (default: the lesson's readings)");
            Flag<string?>(f, "--credentials", "Bench:Credentials", "File of 'ID SECRET' lines (nightlight devices add PREFIX --count N --save FILE) for a broker that authenticates; with --servers ours");
            Flag<string?>(f, "--server-username", "Bench:ServerUsername", "Server identity the measured server connects with (nightlight devices add-server NAME)");
            Flag<string?>(f, "--server-password", "Bench:ServerPassword", "Its secret (passed to the server process in its environment)");
        });

    /// <summary>The naive C# baseline of <c>bench</c>, run as its own process; hidden from help.</summary>
    public static Command NaiveServer()
    {
        var broker = new Option<string>("--broker") { Required = true };
        var threshold = new Option<double>("--threshold") { DefaultValueFactory = _ => 300 };
        var command = new Command("bench-naive-server", "Baseline for bench: answers each message inline (not for use).") { broker, threshold };
        command.Hidden = true;
        command.SetAction(async (parse, cancellationToken) =>
        {
            var address = Nightlight.Protocol.BrokerAddress.Parse(parse.GetValue(broker)!);
            using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            Console.CancelKeyPress += (_, e) => { e.Cancel = true; stop.Cancel(); };
            try
            {
                await Nightlight.Cli.Bench.BaselineServers.RunNaiveAsync(address.Host, address.Port, parse.GetValue(threshold), stop.Token);
            }
            catch (OperationCanceledException)
            {
            }
            return 0;
        });
        return command;
    }

    public static Command Fleet() => Create("fleet", "Run many simulated nightlights, each with its own connection, and count the answers.",
        Roles.Fleet, f =>
        {
            Flag<string?>(f, "--broker", "Fleet:Broker", "Broker address, mqtt://HOST:PORT (default mqtt://localhost:1883)");
            Flag<int?>(f, "--devices", "Fleet:Devices", "How many devices (default 100)");
            Flag<string?>(f, "--interval", "Fleet:Interval", "Time between readings of each device (default 1s)");
            Flag<string?>(f, "--duration", "Fleet:Duration", "Stop after this long, for example 30s (default: run until Ctrl+C)");
            Flag<double?>(f, "--light", "Fleet:Light", "Light level every device reports (default 100)");
            Flag<string?>(f, "--id-prefix", "Fleet:IdPrefix", "Device ids are PREFIX00001, PREFIX00002, ... (default fleet)");
            Flag<string?>(f, "--protocol", "Fleet:Protocol", "MQTT protocol: auto, 3.1.1 or 5");
            Flag<string?>(f, "--credentials", "Fleet:Credentials", "File of 'ID SECRET' lines (nightlight devices add PREFIX --count N --save FILE): the devices' ids and secrets");
            Flag<string?>(f, "--cafile", "Fleet:CaFile", "CA certificate (PEM) the broker's TLS certificate must chain to, for mqtts:// or wss:// brokers");
            Flag<string?>(f, "--offline", "Fleet:Offline", "drop (default) or all: keep every reading on disk in DIR/devices/ID until the server has stored it");
            Flag<string?>(f, "--data", "Data:Directory", "Data directory for --offline all: each device's seq and outbox in DIR/devices/ID (default ./nightlight-data)");
        });
}
