using System.ComponentModel.DataAnnotations;
using Nightlight.Protocol;

namespace Nightlight.Cli;

/// <summary>Configuration section <c>Device</c>: the virtual nightlight run by <c>nightlight device</c> and <c>up</c>.</summary>
public sealed class DeviceHostOptions : IValidatableObject
{
    public const string Section = "Device";

    /// <summary>Broker address, <c>mqtt://HOST:PORT</c>.</summary>
    public string Broker { get; set; } = "mqtt://localhost:1883";

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

    /// <summary>User name for a broker that authenticates (the identity's id); null for anonymous.</summary>
    public string? Username { get; set; }

    /// <summary>Password (the identity's secret). Never logged.</summary>
    public string? Password { get; set; }

    /// <summary>True to stop printing the lesson-style lines.</summary>
    public bool Quiet { get; set; }

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
            yield return new ValidationResult($"Device:Interval '{Interval}' is not a duration (examples: 200ms, 5s)", [nameof(Interval)]);
        }
        if (!Durations.TryParse(DayLength, out _))
        {
            yield return new ValidationResult($"Device:DayLength '{DayLength}' is not a duration (examples: 30s, 2m)", [nameof(DayLength)]);
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
