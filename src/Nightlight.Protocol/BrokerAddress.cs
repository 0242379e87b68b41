namespace Nightlight.Protocol;

/// <summary>
/// Where a broker listens: <c>mqtt://host:port</c> (TCP), <c>ws://host:port/path</c> (WebSocket), and over TLS
/// <c>mqtts://host:port</c> (default port 8883) or <c>wss://host:port/path</c> (default port 443).
/// </summary>
/// <param name="Scheme"><c>mqtt</c>, <c>ws</c>, <c>mqtts</c> or <c>wss</c>.</param>
/// <param name="Host">Host name or address.</param>
/// <param name="Port">TCP port, 1–65535.</param>
/// <param name="Path">WebSocket path, empty for TCP.</param>
public sealed record BrokerAddress(string Scheme, string Host, int Port, string Path = "")
{
    /// <summary>Default MQTT port.</summary>
    public const int DefaultPort = 1883;

    /// <summary>Parses <c>mqtt://host:port</c>, <c>host:port</c>, <c>host</c> or <c>ws://host:port/path</c>.</summary>
    public static bool TryParse(string? text, out BrokerAddress address, out string error)
    {
        address = null!;
        if (string.IsNullOrWhiteSpace(text))
        {
            error = "broker address is empty; expected mqtt://HOST:PORT";
            return false;
        }
        var value = text.Trim();
        if (!value.Contains("://", StringComparison.Ordinal))
        {
            value = "mqtt://" + value;
        }
        if (!Uri.TryCreate(value, UriKind.Absolute, out var uri) || string.IsNullOrEmpty(uri.Host))
        {
            error = $"'{text}' is not a broker address; expected mqtt://HOST:PORT";
            return false;
        }
        var scheme = uri.Scheme.ToLowerInvariant();
        if (scheme is not ("mqtt" or "tcp" or "ws" or "mqtts" or "ssl" or "wss"))
        {
            error = $"'{text}': scheme '{uri.Scheme}' is not supported; use mqtt://, mqtts://, ws:// or wss://";
            return false;
        }
        scheme = scheme switch { "tcp" => "mqtt", "ssl" => "mqtts", _ => scheme };
        var port = uri.IsDefaultPort || uri.Port <= 0 ? scheme switch { "ws" => 80, "wss" => 443, "mqtts" => 8883, _ => DefaultPort } : uri.Port;
        var host = uri.Host.Trim('[', ']');
        address = new BrokerAddress(scheme, host, port, scheme is "ws" or "wss" ? uri.AbsolutePath : "");
        error = "";
        return true;
    }

    /// <summary>Parses or throws <see cref="FormatException"/>; for configuration, not network input.</summary>
    public static BrokerAddress Parse(string text) =>
        TryParse(text, out var address, out var error) ? address : throw new FormatException(error);

    /// <summary>True for <c>ws://</c> and <c>wss://</c>.</summary>
    public bool IsWebSocket => Scheme is "ws" or "wss";

    /// <summary>True for <c>mqtts://</c> and <c>wss://</c>: the connection speaks TLS.</summary>
    public bool IsTls => Scheme is "mqtts" or "wss";

    /// <inheritdoc />
    public override string ToString() => IsWebSocket ? $"{Scheme}://{Host}:{Port}{Path}" : $"{Scheme}://{Host}:{Port}";
}
