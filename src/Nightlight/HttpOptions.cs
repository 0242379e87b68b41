namespace Nightlight.Cli;

/// <summary>
/// Configuration section <c>Http</c>: the port of the dashboard, the history API and MQTT over WebSocket
/// (docs/configuration.md).
/// </summary>
public sealed class HttpOptions
{
    public const string Section = "Http";

    /// <summary>The HTTP port: 5000 (<c>server</c> alone: 5001); 0 picks a free port.</summary>
    public int Port { get; set; } = 5000;

    /// <summary>Address the HTTP port listens on: <c>localhost</c> (default) or an IP address.</summary>
    public string Bind { get; set; } = "localhost";

    /// <summary><c>up</c> and <c>broker</c>: also serve HTTPS on this port, with the TLS listener's certificate.</summary>
    public int? HttpsPort { get; set; }

    /// <summary>Bearer token required by the endpoints that change state; unset: none on loopback, generated off it.</summary>
    public string? Token { get; set; }
}
