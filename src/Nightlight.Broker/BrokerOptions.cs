using System.ComponentModel.DataAnnotations;

namespace Nightlight.Broker;

/// <summary>Configuration section <c>Broker</c>.</summary>
public sealed class BrokerOptions
{
    public const string Section = "Broker";

    /// <summary>MQTT over TCP port. Default 1883.</summary>
    [Range(1, 65535)]
    public int MqttPort { get; set; } = 1883;

    /// <summary>
    /// Address to listen on: <c>localhost</c> (127.0.0.1 and ::1, the default), or an IP address such as
    /// <c>0.0.0.0</c> for every interface.
    /// </summary>
    [Required]
    public string Bind { get; set; } = "localhost";

    /// <summary>
    /// Messages queued for one slow subscriber before the oldest is dropped (counted and logged). MQTTnet's own
    /// default of 1,000 drops silently under ordinary bursts; this one rides out seconds of a busy fleet.
    /// </summary>
    [Range(100, 10_000_000)]
    public int MaxPendingMessagesPerClient { get; set; } = 250_000;

    /// <summary>Which TCP listener carries MQTT: <c>kestrel</c> (default) or <c>mqttnet</c> (MQTTnet's own).</summary>
    [RegularExpression("^(kestrel|mqttnet)$")]
    public string Transport { get; set; } = "kestrel";
}
