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

    /// <summary>
    /// Accept clients without credentials. Unset (the default) means: only on a listener bound to loopback, and
    /// only while no identity exists. <c>true</c> allows them anywhere (a warning is printed when not on loopback);
    /// <c>false</c> requires authentication even on loopback.
    /// </summary>
    public bool? AllowAnonymous { get; set; }

    /// <summary>Require authentication even on loopback before any identity exists. Default false.</summary>
    public bool RequireAuthentication { get; set; }

    /// <summary>Largest MQTT packet accepted, in bytes, header included; larger ones close the connection. Default 256 KiB.</summary>
    [Range(64, 268_435_460)]
    public int MaxPacketSize { get; set; } = 256 * 1024;

    /// <summary>Longest topic name a client may publish to, in characters. Default 256.</summary>
    [Range(16, 65_535)]
    public int MaxTopicLength { get; set; } = 256;

    /// <summary>
    /// PUBLISH packets a second one client may send (one second's worth may come at once); faster clients are read
    /// more slowly. Servers and in-process clients are exempt. 0 turns the limit off. Default 1,000.
    /// </summary>
    [Range(0, 10_000_000)]
    public int MaxPublishRate { get; set; } = 1000;

    /// <summary>
    /// New connections a second from one remote IP address (one second's worth may come at once); more are closed
    /// before CONNECT is read. Loopback is exempt unless <see cref="LimitLoopbackConnections"/>. 0 turns it off. Default 100.
    /// </summary>
    [Range(0, 10_000_000)]
    public int MaxConnectRate { get; set; } = 100;

    /// <summary>Apply <see cref="MaxConnectRate"/> to loopback clients too (tests, a broker behind a local proxy). Default false.</summary>
    public bool LimitLoopbackConnections { get; set; }

    /// <summary>How long a new connection may take to send CONNECT, and any packet to arrive once begun. Default 10s.</summary>
    [RegularExpression(@"^\d+(\.\d+)?(ms|s|m)$")]
    public string ReadTimeout { get; set; } = "10s";

    /// <summary>
    /// Deliver each message only to the sessions whose filters can match it (an index of exact filters plus the
    /// clients with wildcards), instead of checking every session per message as MQTTnet does. Default true.
    /// </summary>
    public bool IndexedRouting { get; set; } = true;

    /// <summary>Turn the MQTT-over-TLS listener on (port <see cref="TlsPort"/>). Default false.</summary>
    public bool Tls { get; set; }

    /// <summary>MQTT over TLS port; setting it turns TLS on. Default 8883 when <see cref="Tls"/> is true.</summary>
    [Range(1, 65535)]
    public int? TlsPort { get; set; }

    /// <summary>
    /// Address the TLS listener listens on; unset: <see cref="Bind"/>. With <c>Bind=localhost</c> and
    /// <c>TlsBind=0.0.0.0</c> only MQTT over TLS is reachable from other machines.
    /// </summary>
    public string? TlsBind { get; set; }

    /// <summary>Certificate file: PEM (with <see cref="KeyPath"/>, or the key inside) or PFX. Unset: a development certificate in the data directory.</summary>
    public string? CertificatePath { get; set; }

    /// <summary>PEM private key file for <see cref="CertificatePath"/>.</summary>
    public string? KeyPath { get; set; }

    /// <summary>Password of the PFX file or of an encrypted PEM key.</summary>
    public string? CertificatePassword { get; set; }

    /// <summary>Set by the CLI for clients in the broker's own process: a fresh random secret each run. Not for users.</summary>
    public string? InProcessSecret { get; set; }

    /// <summary>The TLS port in use, or null when TLS is off.</summary>
    public int? EffectiveTlsPort => TlsPort ?? (Tls ? 8883 : null);

    /// <summary>The TLS listener's address: <see cref="TlsBind"/>, else <see cref="Bind"/>.</summary>
    public string EffectiveTlsBind => string.IsNullOrWhiteSpace(TlsBind) ? Bind : TlsBind;
}
