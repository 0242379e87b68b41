using System.ComponentModel.DataAnnotations;

namespace Nightlight.Server;

/// <summary>Configuration section <c>Server</c>.</summary>
public sealed class ServerOptions
{
    public const string Section = "Server";

    /// <summary>Broker address, <c>mqtt://HOST:PORT</c>; several separated by commas.</summary>
    [Required]
    public string Broker { get; set; } = "mqtt://localhost:1883";

    /// <summary>Serve one device; null or empty serves every device (<c>+/telemetry</c>).</summary>
    public string? Id { get; set; }

    /// <summary>The lesson rule: the LED goes on when light is below this.</summary>
    [Range(0, 1_000_000)]
    public double Threshold { get; set; } = 300;

    /// <summary>True to stop printing the lesson-style lines (for fleets).</summary>
    public bool Quiet { get; set; }

    /// <summary>
    /// The MQTT client id of this server's connection, under which the broker keeps its session (subscriptions and the
    /// readings queued while it is away). Empty: <c>{Id}nightlight_server</c> with <see cref="Id"/>, otherwise
    /// <c>nightlight_server-{group}-{machine}</c> (group: <see cref="SharedSubscriptionGroup"/> or <c>all</c>). Two servers
    /// on one broker need different ids.
    /// </summary>
    [RegularExpression(@"^[A-Za-z0-9_.-]{0,100}$", ErrorMessage = "Server:ClientId may only hold letters, digits, '_', '.' and '-'")]
    public string? ClientId { get; set; }

    /// <summary>How long an MQTT 5 broker keeps this server's session after its connection drops (MQTT 3.1.1 brokers decide themselves).</summary>
    public string SessionExpiry { get; set; } = "1d";

    /// <summary>MQTT protocol: auto, 3.1.1 or 5.</summary>
    public string Protocol { get; set; } = "auto";

    /// <summary>
    /// With an external broker: the MQTT 5 shared subscription group (<c>$share/GROUP/+/telemetry</c>) that several
    /// server processes join so each reading is handled by one of them. Empty: this server takes every reading.
    /// </summary>
    [RegularExpression(@"^[^/+#\s]*$", ErrorMessage = "Server:SharedSubscriptionGroup must not contain '/', '+', '#' or spaces")]
    public string? SharedSubscriptionGroup { get; set; }

    /// <summary>
    /// Where telemetry comes from: <c>mqtt</c> (subscribe on the broker) or <c>amqp</c> (RabbitMQ: consume a queue shared
    /// with the other servers, see <c>Server:Amqp</c>). Commands go out over MQTT either way.
    /// </summary>
    [RegularExpression("^(mqtt|amqp)$", ErrorMessage = "Server:Ingest must be mqtt or amqp")]
    public string Ingest { get; set; } = "mqtt";

    /// <summary>True when <see cref="Ingest"/> is <c>amqp</c>.</summary>
    public bool IngestsFromAmqp => Ingest == "amqp";

    /// <summary>User name for a broker that authenticates (the identity's id); null for anonymous.</summary>
    public string? Username { get; set; }

    /// <summary>Password (the identity's secret). Never logged.</summary>
    public string? Password { get; set; }

    /// <summary>
    /// When the embedded broker runs in the same process (<c>nightlight up</c>): true (default) reads and publishes in
    /// memory, without a loopback MQTT connection; false connects over MQTT as a separate server would. No effect
    /// elsewhere, nor with a shared subscription (which needs a real MQTT session).
    /// </summary>
    public bool InProcess { get; set; } = true;

    /// <summary>
    /// In <c>nightlight server</c>: true runs socket completions on the socket engine's own thread instead of handing
    /// each to the thread pool (.NET's <c>DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS</c>), so readings read from the
    /// broker are decided on and answered without waking a second thread. Null (default): on when telemetry comes over
    /// MQTT and is stored in SQLite, whose writes use no socket; off with PostgreSQL or AMQP, whose client code would
    /// then run on that thread too. The environment variable, when set, wins. Read once, at start.
    /// </summary>
    public bool? InlineSocketCompletions { get; set; }

    /// <summary>The .NET environment variable that <see cref="InlineSocketCompletions"/> sets.</summary>
    public const string InlineCompletionsVariable = "DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS";

    /// <summary>
    /// True (default): after each stored batch, tell each device that numbers its readings how far they are stored, on
    /// <c>{id}/stored</c>, so devices with the offline policy <c>all</c> keep readings until stored. False sends none (such
    /// devices then forget a reading once the broker has it); for measuring what the acknowledgements cost.
    /// </summary>
    public bool StoredAcks { get; set; } = true;

    /// <summary>Readings waiting between ingest and rules before the MQTT client is slowed down.</summary>
    [Range(16, 10_000_000)]
    public int QueueCapacity { get; set; } = 65_536;
}
