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

    /// <summary>Keep persistent sessions, their queued messages and retained messages in <c>{data}/broker</c> across restarts. Default true.</summary>
    public bool Persistence { get; set; } = true;

    /// <summary>
    /// When the session store forces its journal to disk: <c>batch</c> (default: an acknowledgement that depends on the
    /// store waits for the fsync of its batch), <c>interval</c> (fsync once a second; acknowledgements do not wait, a
    /// power cut may lose the last second), <c>never</c> (the operating system writes back; survives kill -9, not a power cut).
    /// </summary>
    [RegularExpression("^(batch|interval|never)$")]
    public string Fsync { get; set; } = "batch";

    /// <summary>Messages queued for one device's session while it is offline or slow; beyond it the oldest are dropped (counted, logged). Default 1,000.</summary>
    [Range(10, 10_000_000)]
    public int MaxQueuedMessages { get; set; } = 1000;

    /// <summary>The same for a server identity, the broker's own clients and an anonymous client with a server client id. Default 250,000.</summary>
    [Range(100, 10_000_000)]
    public int MaxServerQueuedMessages { get; set; } = 250_000;

    /// <summary>Topic filters one device's session may hold; more are refused (SUBACK QuotaExceeded). 0: no limit. Default 100.</summary>
    [Range(0, 10_000_000)]
    public int MaxSubscriptions { get; set; } = 100;

    /// <summary>Retained messages one device may own; more are not retained (the publish is still delivered). 0: no limit. Default 100.</summary>
    [Range(0, 10_000_000)]
    public int MaxRetainedMessages { get; set; } = 100;

    /// <summary>Payload bytes of the retained messages one device may own. 0: no limit. Default 1 MiB.</summary>
    [Range(0, long.MaxValue)]
    public long MaxRetainedBytes { get; set; } = 1024 * 1024;

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
    /// PUBLISH packets a second one device may send; faster devices are read more slowly. Server identities, the
    /// broker's own clients and anonymous clients with a server client id are exempt. 0 turns the limit off. Default 1,000.
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

    /// <summary>
    /// Longest keep-alive a client may use, in seconds: an MQTT 5 client asking for more, or for none, is told this one
    /// (server keep-alive). 0: the client's own. Default 0.
    /// </summary>
    [Range(0, 65535)]
    public int MaxKeepAlive { get; set; }

    /// <summary>How long a new connection may take to send CONNECT. Default 10s.</summary>
    [RegularExpression(@"^\d+(\.\d+)?(ms|s|m)$")]
    public string ReadTimeout { get; set; } = "10s";

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
