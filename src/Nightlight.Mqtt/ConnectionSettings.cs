using Nightlight.Protocol;

namespace Nightlight.Mqtt;

/// <summary>Turns configuration text into connection settings, with errors that name the bad value.</summary>
public static class ConnectionSettings
{
    /// <summary>Parses <c>mqtt://a:1883,mqtt://b:1884</c> into broker addresses.</summary>
    public static IReadOnlyList<BrokerAddress> ParseBrokers(string text)
    {
        var parts = text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (parts.Length == 0)
        {
            throw new FormatException("broker address is empty; expected mqtt://HOST:PORT");
        }
        return [.. parts.Select(BrokerAddress.Parse)];
    }

    /// <summary>Parses <c>auto</c>, <c>3.1.1</c> (or <c>311</c>, <c>4</c>) and <c>5</c> (or <c>5.0</c>, <c>500</c>).</summary>
    public static MqttProtocol ParseProtocol(string? text) => text?.Trim().ToLowerInvariant() switch
    {
        null or "" or "auto" => MqttProtocol.Auto,
        "3.1.1" or "311" or "4" or "v311" => MqttProtocol.V311,
        "5" or "5.0" or "500" or "v5" or "v500" => MqttProtocol.V500,
        _ => throw new FormatException($"protocol '{text}' is not one of auto, 3.1.1, 5"),
    };
}
