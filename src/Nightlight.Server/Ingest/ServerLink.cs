using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Nightlight.Mqtt;
using Nightlight.Protocol;

namespace Nightlight.Server.Ingest;

/// <summary>
/// The server's one link to its broker, made once: in memory beside the embedded broker, otherwise an MQTT connection.
/// <see cref="MqttIngest"/> subscribes, starts and closes it; the command sender publishes on it.
/// </summary>
public sealed class ServerLink
{
    readonly ServerOptions _options;
    readonly BrokerStartSignal? _brokerStart;

    public ServerLink(IOptions<ServerOptions> options, ILoggerFactory loggerFactory, BrokerStartSignal? brokerStart = null,
        IInProcessBroker? inProcessBroker = null)
    {
        _options = options.Value;
        _brokerStart = brokerStart;
        SingleDevice = string.IsNullOrEmpty(_options.Id) ? null : _options.Id;
        if (SingleDevice is not null && !Topics.IsValidDeviceId(SingleDevice))
        {
            throw new OptionsValidationException(ServerOptions.Section, typeof(ServerOptions),
                [$"Server:Id '{SingleDevice}' is not a valid device id"]);
        }
        SessionExpiry = Durations.Parse(_options.SessionExpiry, "Server:SessionExpiry");
        // Telemetry from AMQP: the MQTT link carries commands only, with no session worth keeping, and servers sharing one
        // queue on one machine must not take each other's connection.
        ClientId = !string.IsNullOrEmpty(_options.ClientId) ? _options.ClientId
            : _options.IngestsFromAmqp ? $"nightlight_server-{Guid.NewGuid():N}"[..26]
            : SingleDevice is not null ? Topics.ServerClientId(SingleDevice)
            : $"nightlight_server-{(Shared ? _options.SharedSubscriptionGroup : "all")}-{MachineName()}";
        Link = Create(ClientId, inProcessBroker, loggerFactory, out var reason);
        Reason = reason;
    }

    /// <summary>The client id of the MQTT link: stable across restarts, so the broker keeps this server's session.</summary>
    public string ClientId { get; }

    /// <summary><c>Server:SessionExpiry</c>.</summary>
    public TimeSpan SessionExpiry { get; }

    /// <summary>The machine's name in the characters every broker accepts in a client id.</summary>
    static string MachineName() =>
        new([.. Environment.MachineName.ToLowerInvariant().Select(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' ? c : '-')]);

    /// <summary>The link; not owned by this class, but by <see cref="MqttIngest"/>, which disposes it when the server stops.</summary>
    public IBrokerLink Link { get; }

    /// <summary>Which kind of link and why, for the start-up log.</summary>
    public string Reason { get; }

    /// <summary>The one device this server serves (<c>Server:Id</c>), or null for every device.</summary>
    public string? SingleDevice { get; }

    /// <summary>True when telemetry is shared between servers (<c>Server:SharedSubscriptionGroup</c>).</summary>
    public bool Shared => !string.IsNullOrEmpty(_options.SharedSubscriptionGroup);

    /// <summary>
    /// In memory when the embedded broker runs in this process (<c>Server:InProcess</c>) and nothing needs a real MQTT
    /// session; otherwise an MQTT connection. <paramref name="reason"/> says which and why, for the start-up log.
    /// </summary>
    IBrokerLink Create(string clientId, IInProcessBroker? inProcessBroker, ILoggerFactory loggerFactory, out string reason)
    {
        if (inProcessBroker is null)
        {
            reason = "MQTT connection (the broker is another process)";
        }
        else if (!_options.InProcess)
        {
            reason = "MQTT connection over loopback (Server:InProcess is false)";
        }
        else if (Shared)
        {
            // Other server processes may join the same group on this broker: only a real session takes its share.
            reason = "MQTT connection over loopback (a shared subscription needs a real MQTT session)";
        }
        else
        {
            reason = "in process (no network round trip)";
            // No session to keep in memory; a unique id leaves the stable one to a server that connects over MQTT.
            return inProcessBroker.CreateLink(SingleDevice is null ? $"nightlight_server-{Guid.NewGuid():N}"[..26] : clientId, Announcement);
        }
        // Readings are decided on as they are read, and the answers to one read leave together (see ReadingPipeline.OfferAsync).
        var options = ConnectionOptions(clientId);
        options.DeliverOnReceiveLoop = true;
        // A session the broker keeps while this server restarts, and a reconnect within seconds once the broker is back:
        // a device's back-off is its own, but every reading waits for this one.
        options.CleanSession = _options.IngestsFromAmqp;
        options.SessionExpiry = _options.IngestsFromAmqp ? null : SessionExpiry;
        options.ReconnectMaxDelay = TimeSpan.FromSeconds(2);
        if (Announcement is { } presence)
        {
            // The broker says offline for this server when its connection dies without a clean stop.
            options.Will = new LastWill(presence.Topic, presence.Offline);
        }
        return new MqttBrokerLink(new ManagedMqttConnection(options, loggerFactory.CreateLogger<ManagedMqttConnection>()), Announcement);
    }

    /// <summary>
    /// The server's retained presence on <see cref="Topics.ServerStatus"/>, with its last will: devices count their
    /// fallback time from the moment it says offline. Not for servers that share the work (<c>--share</c>, AMQP
    /// ingest): on the one topic, a member that stops would say the whole group is gone (see docs/protocols.md).
    /// </summary>
    LinkPresence? Announcement => Shared || _options.IngestsFromAmqp ? null : ServerPresence;

    static readonly LinkPresence ServerPresence = new(Topics.ServerStatus, Presence.Online(), Presence.Offline());

    /// <summary>Options for a connection of this server to its broker (the link, or the group rules' feed).</summary>
    // Shared subscriptions are MQTT 5 only.
    public MqttConnectionOptions ConnectionOptions(string clientId) => MqttConnectionOptions.From(_options.Broker, clientId,
        Shared ? "5" : _options.Protocol, _options.Username, _options.Password, _brokerStart);
}
