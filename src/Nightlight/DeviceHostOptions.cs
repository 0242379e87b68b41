using System.ComponentModel.DataAnnotations;
using Nightlight.Protocol;

namespace Nightlight.Cli;

/// <summary>Configuration section <c>Device</c>: the virtual nightlight run by <c>nightlight device</c> and <c>up</c>.</summary>
public sealed class DeviceHostOptions : IValidatableObject
{
    public const string Section = "Device";

    /// <summary>In <c>up</c>: false runs the broker, the server and the dashboard without the virtual nightlight (<c>--no-device</c>).</summary>
    public bool Enabled { get; set; } = true;

    /// <summary>Broker address, <c>mqtt://HOST:PORT</c>.</summary>
    public string Broker { get; set; } = "mqtt://localhost:1883";

    /// <summary>How the device reaches the server: <c>mqtt</c> (the lesson's, through <see cref="Broker"/>) or <c>http</c> (straight to <see cref="Server"/>).</summary>
    public string Transport { get; set; } = "mqtt";

    /// <summary>The server's HTTP address for <c>Transport=http</c>: <c>http://HOST:PORT</c> of <c>nightlight up</c> (5000) or <c>server</c> (5001).</summary>
    public string Server { get; set; } = "http://localhost:5000";

    /// <summary>Device id; the topics are <c>{Id}/telemetry</c> and <c>{Id}/commands</c>.</summary>
    public string Id { get; set; } = "";

    /// <summary>Time between readings: <c>5s</c>, <c>200ms</c>.</summary>
    public string Interval { get; set; } = "5s";

    /// <summary>A fixed light level (0–1023); null follows the day/night curve.</summary>
    [Range(0, 1023)]
    public double? Light { get; set; }

    /// <summary>Length of one simulated day and night.</summary>
    public string DayLength { get; set; } = "2m";

    /// <summary>MQTT protocol: auto, 3.1.1 or 5.</summary>
    public string Protocol { get; set; } = "auto";

    /// <summary>Device type: <c>nightlight</c> (light sensor, LED) or <c>thermostat</c> (temperature, heater).</summary>
    public string Type { get; set; } = "nightlight";

    /// <summary>Offline policy of the telemetry: <c>drop</c> (the lesson's), <c>latest</c> or <c>all</c> (durable, on disk).</summary>
    public string Offline { get; set; } = "drop";

    /// <summary>Telemetry QoS 0, 1 or 2; null picks 1 for <c>all</c> and 0 otherwise.</summary>
    [Range(0, 2)]
    public int? Qos { get; set; }

    /// <summary>fsync policy of the outbox: <c>always</c> (default), <c>interval</c> (once a second) or <c>never</c>.</summary>
    public string Sync { get; set; } = "always";

    /// <summary>Largest outbox on disk, in megabytes; the oldest readings are dropped (and counted) beyond it.</summary>
    [Range(1, 1_000_000)]
    public long OutboxMegabytes { get; set; } = 64;

    /// <summary>A fixed temperature in °C for the thermostat; null lets the room warm and cool with its heater.</summary>
    public double? Temperature { get; set; }

    /// <summary>
    /// A CounterFit-compatible app to use as hardware (<c>http://HOST:PORT</c>): light sensor on port 0, LED on port 5.
    /// Empty uses the virtual hardware in this process.
    /// </summary>
    public string? Hardware { get; set; }
    /// <summary>User name for a broker that authenticates (the identity's id); null for anonymous.</summary>
    public string? Username { get; set; }

    /// <summary>Password (the identity's secret). Never logged.</summary>
    public string? Password { get; set; }

    /// <summary>PEM client certificate (from <c>nightlight devices add ID --cert</c>); implies TLS.</summary>
    public string? CertificateFile { get; set; }

    /// <summary>PEM private key of <see cref="CertificateFile"/>.</summary>
    public string? KeyFile { get; set; }

    /// <summary>PEM certificate authority the broker's certificate must chain to (for example the broker's <c>dev-broker.pem</c>); set, the device speaks TLS.</summary>
    public string? CaFile { get; set; }

    /// <summary>True to stop printing the lesson-style lines.</summary>
    public bool Quiet { get; set; }

    /// <summary>Speak TLS to the broker (trusting the system's certificate store unless <see cref="CaFile"/> is set).</summary>
    public bool Tls { get; set; }

    /// <summary>Time without a broker connection before the device decides alone (<c>10s</c>); empty or 0: never (default).</summary>
    public string? FallbackAfter { get; set; }

    /// <summary>Time connected without a command before the device decides alone; empty or 0: never (default).</summary>
    public string? FallbackSilence { get; set; }

    /// <summary>Nightlight's local rule: LED on below this light level.</summary>
    [Range(0, 1023)]
    public double Threshold { get; set; } = 300;

    /// <summary>Thermostat's local rule: heating on below this temperature, °C.</summary>
    [Range(-50, 100)]
    public double SetPoint { get; set; } = 20;

    /// <summary>A fallback timeout as a span; null when off.</summary>
    public static TimeSpan? Timeout(string? text) =>
        string.IsNullOrWhiteSpace(text) || Durations.IsZero(text) ? null : Durations.Parse(text, "Device:Fallback");

    /// <summary>The offline policy as the SDK's enum.</summary>
    public Nightlight.Device.OfflinePolicy OfflinePolicy => Offline switch
    {
        "latest" => Nightlight.Device.OfflinePolicy.Latest,
        "all" => Nightlight.Device.OfflinePolicy.All,
        _ => Nightlight.Device.OfflinePolicy.Drop,
    };

    /// <summary>The fsync policy as the SDK's enum.</summary>
    public Nightlight.Device.OutboxSync OutboxSync => Sync switch
    {
        "interval" => Nightlight.Device.OutboxSync.Interval,
        "never" => Nightlight.Device.OutboxSync.Never,
        _ => Nightlight.Device.OutboxSync.Always,
    };

    public IEnumerable<ValidationResult> Validate(ValidationContext validationContext)
    {
        if (!Topics.IsValidDeviceId(Id))
        {
            yield return new ValidationResult(string.IsNullOrEmpty(Id)
                ? "Device:Id is required (--id)"
                : $"Device:Id '{Id}' is not a valid device id: 1-{Topics.MaxDeviceIdLength} characters, no '/', '+', '#', spaces or control characters", [nameof(Id)]);
        }
        if (!Durations.TryParse(Interval, out _))
        {
            yield return new ValidationResult($"Device:Interval '{Interval}' {Durations.Problem(Interval)}", [nameof(Interval)]);
        }
        foreach (var (name, value) in new[] { ("FallbackAfter", FallbackAfter), ("FallbackSilence", FallbackSilence) })
        {
            if (!string.IsNullOrWhiteSpace(value) && !Durations.IsZero(value) && !Durations.TryParse(value, out _))
            {
                yield return new ValidationResult($"Device:{name} '{value}' {Durations.Problem(value)} (0 turns it off)", [name]);
            }
        }
        if (!Durations.TryParse(DayLength, out _))
        {
            yield return new ValidationResult($"Device:DayLength '{DayLength}' {Durations.Problem(DayLength)}", [nameof(DayLength)]);
        }
        if (Transport is not ("mqtt" or "http"))
        {
            yield return new ValidationResult($"Device:Transport '{Transport}' is not one of mqtt, http", [nameof(Transport)]);
        }
        if (Transport == "http" && !(Uri.TryCreate(Server, UriKind.Absolute, out var server) && server.Scheme is "http" or "https"))
        {
            yield return new ValidationResult($"Device:Server '{Server}' is not an http://HOST:PORT address", [nameof(Server)]);
        }
        if (Transport == "http" && Type != "nightlight")
        {
            yield return new ValidationResult("Device:Transport http runs the nightlight only (Device:Type nightlight)", [nameof(Transport)]);
        }
        if (Type is not ("nightlight" or "thermostat"))
        {
            yield return new ValidationResult($"Device:Type '{Type}' is not one of nightlight, thermostat", [nameof(Type)]);
        }
        if (Offline is not ("drop" or "latest" or "all"))
        {
            yield return new ValidationResult($"Device:Offline '{Offline}' is not one of drop, latest, all", [nameof(Offline)]);
        }
        if (Sync is not ("always" or "interval" or "never"))
        {
            yield return new ValidationResult($"Device:Sync '{Sync}' is not one of always, interval, never", [nameof(Sync)]);
        }
        if (!string.IsNullOrEmpty(Hardware) &&
            !(Uri.TryCreate(Hardware, UriKind.Absolute, out var hardware) && hardware.Scheme is "http" or "https"))
        {
            yield return new ValidationResult($"Device:Hardware '{Hardware}' is not an http://HOST:PORT address", [nameof(Hardware)]);
        }
        foreach (var part in Broker.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            if (!BrokerAddress.TryParse(part, out _, out var error))
            {
                yield return new ValidationResult($"Device:Broker: {error}", [nameof(Broker)]);
            }
        }
    }
}
