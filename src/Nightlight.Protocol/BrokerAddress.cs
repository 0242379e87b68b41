namespace Nightlight.Protocol;

/// <summary>Where a broker listens: <c>mqtt://host:port</c> (TCP) or <c>ws://host:port/path</c> (WebSocket).</summary>
/// <param name="Scheme"><c>mqtt</c> or <c>ws</c>.</param>
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
        if (scheme is not ("mqtt" or "tcp" or "ws"))
        {
            error = $"'{text}': scheme '{uri.Scheme}' is not supported; use mqtt:// or ws://";
            return false;
        }
        var port = uri.IsDefaultPort || uri.Port <= 0 ? (scheme == "ws" ? 80 : DefaultPort) : uri.Port;
        var host = uri.Host.Trim('[', ']');
        address = new BrokerAddress(scheme == "tcp" ? "mqtt" : scheme, host, port, scheme == "ws" ? uri.AbsolutePath : "");
        error = "";
        return true;
    }

    /// <summary>Parses or throws <see cref="FormatException"/>; for configuration, not network input.</summary>
    public static BrokerAddress Parse(string text) =>
        TryParse(text, out var address, out var error) ? address : throw new FormatException(error);

    /// <inheritdoc />
    public override string ToString() => Scheme == "ws" ? $"ws://{Host}:{Port}{Path}" : $"mqtt://{Host}:{Port}";
}
