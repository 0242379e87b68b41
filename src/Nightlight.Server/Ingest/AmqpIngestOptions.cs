using System.ComponentModel.DataAnnotations;

namespace Nightlight.Server.Ingest;

/// <summary>
/// Configuration section <c>Server:Amqp</c>: where a server reads telemetry when <c>Server:Ingest</c> is <c>amqp</c>
/// (RabbitMQ, whose MQTT plugin routes every MQTT publish to the <c>amq.topic</c> exchange).
/// </summary>
public sealed class AmqpIngestOptions : IValidatableObject
{
    public const string Section = "Server:Amqp";

    /// <summary>
    /// AMQP address of the broker, <c>amqp://USER:PASSWORD@HOST:5672/VHOST</c>; several nodes of one cluster separated by
    /// commas (the client connects to the first it reaches and moves to another when that node goes).
    /// </summary>
    public string Uri { get; set; } = "amqp://guest:guest@localhost:5672/";

    /// <summary>The exchange the MQTT plugin publishes to (RabbitMQ's <c>mqtt.exchange</c>).</summary>
    public string Exchange { get; set; } = "amq.topic";

    /// <summary>The durable queue that every server consumes from, each reading going to one of them.</summary>
    [Required]
    public string Queue { get; set; } = "nightlight.telemetry";

    /// <summary>
    /// Queue type of <see cref="Queue"/>: <c>classic</c> (lives on one node) or <c>quorum</c> (replicated; needs a
    /// majority of nodes up, so three or more).
    /// </summary>
    public string QueueType { get; set; } = "classic";

    /// <summary>
    /// The single-active-consumer queue that carries the group sensors' readings to exactly one server at a time, so
    /// group rules see every reading of their group. Unused without group rules.
    /// </summary>
    [Required]
    public string GroupQueue { get; set; } = "nightlight.groups";

    /// <summary>
    /// Unacknowledged readings a server holds at once. A reading is acknowledged once it is stored, so this also bounds
    /// what a killed server hands back to the others.
    /// </summary>
    [Range(1, 65_535)]
    public ushort Prefetch { get; set; } = 2000;

    /// <summary>The addresses in <see cref="Uri"/>.</summary>
    public IReadOnlyList<Uri> Endpoints =>
        [.. Uri.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(u => new Uri(u))];

    public IEnumerable<ValidationResult> Validate(ValidationContext validationContext)
    {
        foreach (var part in Uri.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            if (!System.Uri.TryCreate(part, UriKind.Absolute, out var uri) || uri.Scheme is not ("amqp" or "amqps"))
            {
                yield return new ValidationResult($"Server:Amqp:Uri '{part}' is not an amqp://HOST:PORT address", [nameof(Uri)]);
            }
            else if (uri.Scheme == "amqps")
            {
                // The RabbitMQ client would speak plain AMQP to the address, and its TLS gives no way to keep a
                // certificate from making it download URLs: refused rather than half done.
                yield return new ValidationResult($"Server:Amqp:Uri '{uri.Host}:{uri.Port}': amqps:// (TLS to RabbitMQ) is not supported; use amqp:// on a private network or through a TLS tunnel",
                    [nameof(Uri)]);
            }
        }
        if (QueueType is not ("classic" or "quorum"))
        {
            yield return new ValidationResult($"Server:Amqp:QueueType '{QueueType}' is not one of classic, quorum", [nameof(QueueType)]);
        }
    }
}
