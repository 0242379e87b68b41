namespace Nightlight.Security;

/// <summary>Who a broker connection is.</summary>
public enum PrincipalKind
{
    /// <summary>No credentials, allowed only in anonymous mode: may do anything, as on a Mosquitto without ACLs.</summary>
    Anonymous,

    /// <summary>A device identity: its own <c>{id}/</c> and nothing else.</summary>
    Device,

    /// <summary>A server identity: reads every device, commands every device.</summary>
    Server,

    /// <summary>A server or device running inside the broker's own process (a per-process secret).</summary>
    InProcess,
}

/// <summary>A connection's identity, decided once at CONNECT and kept in the MQTT session.</summary>
/// <param name="Kind">What it is.</param>
/// <param name="Id">Device id or server name; empty for anonymous and in-process clients.</param>
/// <param name="UserName">The user name the connection sent (null when none).</param>
/// <param name="Certificate">SHA-256 thumbprint of the device certificate it authenticated with; null for a password.</param>
public sealed record Principal(PrincipalKind Kind, string Id, string? UserName, string? Certificate = null);

/// <summary>Why a topic is refused before any access rule is asked.</summary>
public enum TopicProblem
{
    None,
    Empty,
    TooLong,
    Wildcard,
    ControlCharacter,
    SystemTopic,
}

/// <summary>
/// The broker's access rules, as pure functions (the broker calls them on every CONNECT, PUBLISH and SUBSCRIBE).
/// A client id names its owner without looking at which identities exist, so no identity added later can claim
/// another's session: a device <c>D</c> may use <c>D</c>, <c>Dnightlight_client</c> (the lesson's form) or
/// <c>D#anything</c> ('#' cannot be part of an identity's id); a server <c>S</c> may use <c>S</c>, <c>S#anything</c>,
/// and the server forms <c>anythingnightlight_server</c> (the lesson's) and <c>nightlight_server-anything</c> (what
/// <c>nightlight server</c> uses when it serves every device), which no device may use.
/// </summary>
public static class AccessPolicy
{
    /// <summary>The user name of clients in the broker's own process.</summary>
    public const string InProcessUserName = "$nightlight-in-process";

    const string DeviceClientSuffix = "nightlight_client";
    const string ServerClientSuffix = "nightlight_server";

    /// <summary>The separator of the <c>ID#anything</c> form: no identity's id contains it (see <see cref="Nightlight.Protocol.Topics.IsValidDeviceId"/>).</summary>
    public const char ClientIdSeparator = '#';

    public static bool ClientIdBelongsTo(Principal principal, string clientId) => principal.Kind switch
    {
        PrincipalKind.Device => !IsServerClientId(clientId) && OwnerOf(clientId) == principal.Id,
        PrincipalKind.Server => IsServerClientId(clientId) || OwnerOf(clientId) == principal.Id,
        _ => true,
    };

    /// <summary>
    /// The identity a client id belongs to: what precedes the first '#'; else, for <c>Xnightlight_client</c>, X; else
    /// the whole id. One answer per client id, whatever identities exist.
    /// </summary>
    public static string OwnerOf(string clientId)
    {
        var separator = clientId.IndexOf(ClientIdSeparator);
        if (separator >= 0)
        {
            return clientId[..separator];
        }
        if (clientId.Length > DeviceClientSuffix.Length && clientId.EndsWith(DeviceClientSuffix, StringComparison.Ordinal))
        {
            return clientId[..^DeviceClientSuffix.Length];
        }
        return clientId;
    }

    /// <summary>The client id forms of a Nightlight server: <c>anythingnightlight_server</c> and <c>nightlight_server-anything</c>.</summary>
    public static bool IsServerClientId(string clientId) =>
        clientId.EndsWith(ServerClientSuffix, StringComparison.Ordinal) || clientId.StartsWith(ServerClientSuffix + "-", StringComparison.Ordinal);

    /// <summary>
    /// Checks a PUBLISH topic name: not empty, at most <paramref name="maxLength"/> characters, no wildcard
    /// (forbidden by the MQTT spec), no control character, not under <c>$SYS</c> (the broker's own; other <c>$</c> topics are ordinary, only kept out of
    /// wildcards at the first level).
    /// </summary>
    public static TopicProblem CheckTopicName(string? topic, int maxLength)
    {
        if (string.IsNullOrEmpty(topic))
        {
            return TopicProblem.Empty;
        }
        if (topic.Length > maxLength)
        {
            return TopicProblem.TooLong;
        }
        if (topic.StartsWith("$SYS", StringComparison.Ordinal))
        {
            return TopicProblem.SystemTopic;
        }
        foreach (var c in topic)
        {
            if (c is '+' or '#')
            {
                return TopicProblem.Wildcard;
            }
            if (char.IsControl(c))
            {
                return TopicProblem.ControlCharacter;
            }
        }
        return TopicProblem.None;
    }

    /// <summary>
    /// True when a topic has an empty level (<c>/nightlight1/telemetry</c>, <c>a//b</c>, <c>a/</c>): legal MQTT, but no
    /// Nightlight topic has one, and a leading '/' is the usual reason a reading reaches nobody.
    /// </summary>
    public static bool HasEmptyLevel(string topic) =>
        topic.Length > 0 && (topic[0] == '/' || topic[^1] == '/' || topic.Contains("//", StringComparison.Ordinal));

    public static bool CanPublish(Principal principal, string topic) => principal.Kind switch
    {
        PrincipalKind.Device => topic.StartsWith(principal.Id + "/", StringComparison.Ordinal),
        PrincipalKind.Server => topic.StartsWith(principal.Id + "/", StringComparison.Ordinal) || IsCommandTopic(topic) ||
            topic == Nightlight.Protocol.Topics.ServerStatus,
        _ => true,
    };

    public static bool CanSubscribe(Principal principal, string filter)
    {
        if (filter.Length == 0 || filter.Any(char.IsControl))
        {
            return false;
        }
        return principal.Kind switch
        {
            // Within its own subtree only: {id}/commands, or {id}/# for a device that also wants its own acks; and the
            // server's presence, which every device reads to know when to decide alone.
            PrincipalKind.Device => filter.StartsWith(principal.Id + "/", StringComparison.Ordinal) || filter == Nightlight.Protocol.Topics.ServerStatus,
            PrincipalKind.Server => filter[0] != '$',
            _ => true,
        };
    }

    // {device}/commands or below it, and {device}/stored: what a server publishes.
    static bool IsCommandTopic(string topic)
    {
        var slash = topic.IndexOf('/');
        if (slash <= 0 || !Nightlight.Protocol.Topics.IsValidDeviceId(topic[..slash]))
        {
            return false;
        }
        var rest = topic.AsSpan(slash + 1);
        return rest.SequenceEqual(Nightlight.Protocol.Topics.CommandsLevel) || rest.SequenceEqual(Nightlight.Protocol.Topics.StoredLevel) ||
            (rest.StartsWith(Nightlight.Protocol.Topics.CommandsLevel + "/") );
    }
}
