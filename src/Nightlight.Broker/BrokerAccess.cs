using System.Collections.Concurrent;
using System.Net;
using System.Security.Cryptography;
using System.Text;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Nightlight.Broker.Core;
using Nightlight.Broker.Core.Packets;
using Nightlight.Security;

namespace Nightlight.Broker;

/// <summary>
/// What the embedded broker decides about its clients (the core's <see cref="IBrokerHooks"/>): who may connect
/// (identities from <see cref="DeviceIdentities"/>, anonymous clients where a listener allows them, clients of this
/// process), which client ids each may use (<see cref="AccessPolicy.ClientIdBelongsTo"/>), what each may publish and
/// subscribe to, and the limits each is held to. Every refusal gets the protocol's reason code, a counter and a log
/// line (at most ten a second, then a count). Secrets are never logged.
/// </summary>
sealed partial class BrokerAccess(DeviceIdentities identities, DeviceCertificateAuthority authority, IOptions<BrokerOptions> options,
    BrokerListeners listeners, FailureBackoff backoff, BrokerMetrics metrics, Nightlight.Mqtt.BrokerMessageTap tap, LessonPlaceholder placeholder,
    ILogger<BrokerAccess> logger) : IBrokerHooks
{
    /// <summary>The identity of clients in the broker's own process, as <see cref="ClientContext.Identity"/> carries it ('$' starts no identity's id).</summary>
    public const string InProcessIdentity = AccessPolicy.InProcessUserName;

    readonly byte[]? _inProcessSecret = string.IsNullOrEmpty(options.Value.InProcessSecret) ? null : Encoding.UTF8.GetBytes(options.Value.InProcessSecret);
    readonly ClientLimits _deviceLimits = new(options.Value.MaxPublishRate, options.Value.MaxSubscriptions, options.Value.MaxRetainedMessages,
        options.Value.MaxRetainedBytes, options.Value.MaxQueuedMessages);
    readonly ClientLimits _serverLimits = new(0, 0, 0, 0, options.Value.MaxServerQueuedMessages);
    readonly LogBudget _logBudget = new(10);

    /// <summary>Limits of the broker's own clients and of server identities.</summary>
    public ClientLimits ServerLimits => _serverLimits;

    /// <summary>
    /// Whether a client without credentials may connect now through <paramref name="listener"/>: only where that
    /// listener is bound to loopback, and only while no identity exists (identities can appear while the broker runs).
    /// </summary>
    public bool AnonymousAllowedOn(BrokerListener? listener)
    {
        var o = options.Value;
        return o.AllowAnonymous ?? (!o.RequireAuthentication && listeners.OnLoopback(listener) && !identities.Exists);
    }

    public async ValueTask<ConnectDecision> AuthenticateAsync(ConnectPacket connect, ClientEndpoint endpoint, CancellationToken cancellationToken)
    {
        if (LessonPlaceholder.In(connect.ClientId))
        {
            placeholder.Warn(connect.ClientId, "client id", connect.ClientId);
        }
        var userName = string.IsNullOrEmpty(connect.Username) ? null : connect.Username;
        var listener = listeners.ByName(endpoint.Listener);
        Principal? principal = null;
        string? refusal = null;
        var code = ReasonCode.NotAuthorized;
        if (endpoint.ClientCertificate is { } certificate)
        {
            // A client certificate (TLS listener) is the identity; a user name, if sent too, must name the same device.
            if (!authority.TryVerify(certificate, out var deviceId, out var problem))
            {
                refusal = problem;
            }
            else if (DeviceCertificateAuthority.Thumbprint(certificate) is var thumbprint && !identities.HasCertificate(deviceId, thumbprint))
            {
                refusal = $"certificate of '{deviceId}' is revoked or was not issued to it";
            }
            else if (userName is not null && userName != deviceId)
            {
                refusal = $"user name differs from the certificate's device '{deviceId}'";
                code = ReasonCode.BadUserNameOrPassword;
            }
            else
            {
                principal = new Principal(PrincipalKind.Device, deviceId, userName, thumbprint);
            }
        }
        else if (userName == AccessPolicy.InProcessUserName)
        {
            if (_inProcessSecret is not null && connect.Password is { } password && CryptographicOperations.FixedTimeEquals(password, _inProcessSecret))
            {
                principal = new Principal(PrincipalKind.InProcess, "", userName);
            }
            else
            {
                refusal = "wrong in-process credentials";
                code = ReasonCode.BadUserNameOrPassword;
            }
        }
        else if (userName is not null && identities.TryGetRole(userName, out var role))
        {
            if (await identities.VerifyAsync(userName, connect.Password, cancellationToken))
            {
                principal = new Principal(role == IdentityRole.Server ? PrincipalKind.Server : PrincipalKind.Device, userName, userName);
            }
            else
            {
                refusal = "wrong password";
                code = ReasonCode.BadUserNameOrPassword;
            }
        }
        else if (userName is not null && identities.Exists)
        {
            refusal = "unknown user name";
            code = ReasonCode.BadUserNameOrPassword;
        }
        else if (AnonymousAllowedOn(listener))
        {
            principal = new Principal(PrincipalKind.Anonymous, "", userName);
        }
        else
        {
            refusal = listener is { OnLoopback: false } && identities.Count == 0 && options.Value.AllowAnonymous is null
                ? $"no credentials, and {listener.Address} is not bound to loopback"
                : "no credentials, and this broker requires them";
        }

        if (principal is not null && !AccessPolicy.ClientIdBelongsTo(principal, connect.ClientId))
        {
            refusal = AccessPolicy.IsServerClientId(connect.ClientId)
                ? $"client id is a server's, and '{principal.Id}' is a device"
                : $"client id belongs to '{Printable(AccessPolicy.OwnerOf(connect.ClientId))}', not to '{principal.Id}' (use {principal.Id}, {principal.Id}nightlight_client or {principal.Id}#anything)";
            code = ReasonCode.ClientIdentifierNotValid;
            principal = null;
        }
        if (principal is null)
        {
            Report(metrics.ConnectionRefused(), () => LogConnectionRefused(Printable(connect.ClientId), Printable(userName ?? "(none)"), endpoint.RemoteAddress, refusal ?? "refused"));
            if (code == ReasonCode.BadUserNameOrPassword &&
                backoff.Fail(IPEndPoint.TryParse(endpoint.RemoteAddress, out var remote) ? remote.Address.ToString() : endpoint.RemoteAddress, userName) is var delay &&
                delay > TimeSpan.Zero)
            {
                // The refusal waits; the connection holds no CPU meanwhile, and a guesser's next try comes later.
                await Task.Delay(delay, cancellationToken);
            }
            return ConnectDecision.Refuse(code);
        }
        return principal.Kind switch
        {
            PrincipalKind.Device => ConnectDecision.Accept(principal.Id, _deviceLimits),
            PrincipalKind.Server => ConnectDecision.Accept(principal.Id, _serverLimits),
            PrincipalKind.InProcess => ConnectDecision.Accept(InProcessIdentity, _serverLimits),
            // Anonymous mode is the lesson's: its server answers every device, so it is held to a server's limits.
            _ => ConnectDecision.Accept(null, AccessPolicy.IsServerClientId(connect.ClientId) ? _serverLimits : _deviceLimits),
        };
    }

    public bool MaySubscribe(ClientContext client, string filter)
    {
        if (LessonPlaceholder.In(filter))
        {
            placeholder.Warn(client.ClientId, "topic", filter);
        }
        if (filter.Length > options.Value.MaxTopicLength)
        {
            Report(metrics.SubscriptionRefused(), () => LogSubscriptionRefused(Printable(client.ClientId), Printable(filter), "longer than Broker:MaxTopicLength"));
            return false;
        }
        var principal = Resolve(client);
        if (principal is not null && AccessPolicy.CanSubscribe(principal, filter))
        {
            return true;
        }
        Report(metrics.SubscriptionRefused(), () => LogSubscriptionRefused(Printable(client.ClientId), Printable(filter),
            principal is null ? "identity no longer valid" : $"not a filter of '{principal.Id}'"));
        return false;
    }

    public bool MayPublish(ClientContext client, string topic)
    {
        var problem = AccessPolicy.CheckTopicName(topic, options.Value.MaxTopicLength);
        if (problem != TopicProblem.None)
        {
            ReportPublishRefused(client.ClientId, topic, $"invalid topic name ({problem})");
            return false;
        }
        var principal = Resolve(client);
        if (principal is not null && AccessPolicy.CanPublish(principal, topic))
        {
            if (AccessPolicy.HasEmptyLevel(topic))
            {
                WarnEmptyLevel(client.ClientId, topic);
            }
            return true;
        }
        ReportPublishRefused(client.ClientId, topic, principal is null ? "identity no longer valid" : $"not a topic of '{principal.Id}'");
        return false;
    }

    readonly ClientsTold _toldOfEmptyLevels = new();

    /// <summary>Delivered as MQTT allows, but said once per client: a leading '/' is the usual reason nobody receives it.</summary>
    void WarnEmptyLevel(string clientId, string topic)
    {
        if (_toldOfEmptyLevels.FirstTime(clientId))
        {
            LogEmptyLevel(Printable(clientId), Printable(topic));
        }
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "Client {ClientId} publishes on '{Topic}', which has an empty level (a leading, trailing or doubled '/'); delivered, but Nightlight's topics have none: the lesson's are '{{id}}/telemetry' and '{{id}}/commands'")]
    partial void LogEmptyLevel(string clientId, string topic);

    // Apart from MayPublish, whose every call would otherwise allocate the closure over its arguments.
    void ReportPublishRefused(string clientId, string topic, string reason) =>
        Report(metrics.PublishRefused(), () => LogPublishRefused(Printable(clientId), Printable(topic), reason));

    /// <summary>
    /// The principal decided at CONNECT, checked again against what changed since: a removed identity, or anonymous
    /// access turned off by the first identity added, loses its rights at once (and <see cref="IdentityWatch"/> ends
    /// its connections).
    /// </summary>
    Principal? Resolve(ClientContext client)
    {
        if (client.Identity is not { } identity)
        {
            return AnonymousAllowedOn(listeners.ByName(client.Endpoint.Listener)) ? AnonymousPrincipal : null;
        }
        if (identity == InProcessIdentity)
        {
            return InProcessPrincipal;
        }
        if (!identities.TryGetRole(identity, out var role))
        {
            return null;
        }
        var kind = role == IdentityRole.Server ? PrincipalKind.Server : PrincipalKind.Device;
        // Asked on every PUBLISH: the principal of an identity is made once, and again only when its role changed.
        if (_principals.TryGetValue(identity, out var known) && known.Kind == kind)
        {
            return known;
        }
        var principal = new Principal(kind, identity, identity);
        _principals[identity] = principal;
        return principal;
    }

    static readonly Principal AnonymousPrincipal = new(PrincipalKind.Anonymous, "", null);
    static readonly Principal InProcessPrincipal = new(PrincipalKind.InProcess, "", InProcessIdentity);
    readonly ConcurrentDictionary<string, Principal> _principals = new(StringComparer.Ordinal);

    public void OnConnected(ClientContext client, bool sessionPresent)
    {
        metrics.ClientConnected();
        LogConnected(client.ClientId, client.Endpoint.Listener, client.Endpoint.RemoteAddress, client.Version, sessionPresent);
    }

    public void OnDisconnected(ClientContext client, DisconnectKind kind)
    {
        metrics.ClientDisconnected();
        if (kind == DisconnectKind.KeepAliveTimeout)
        {
            metrics.ConnectionTimedOut();
        }
        LogDisconnected(client.ClientId, kind);
    }

    public void OnMessageDropped(string clientId, ApplicationMessage message, DropReason reason)
    {
        var total = metrics.MessageDropped(reason);
        // One line for the first drop and then one per thousand, so a flood cannot flood the log too.
        if (total == 1 || total % 1000 == 0)
        {
            LogDropped(Printable(clientId), Printable(message.Topic), Describe(reason), total);
        }
    }

    string Describe(DropReason reason) => reason switch
    {
        DropReason.QueueFull => "its queue is full (Broker:MaxQueuedMessages), oldest dropped",
        DropReason.Expired => "the message expired before it could be delivered",
        DropReason.TooLarge => "the message is larger than the client accepts",
        DropReason.SessionExpired => "its session expired with the message still queued",
        DropReason.NotAuthorized => "the client may not publish there (a will)",
        DropReason.RetainedQuotaExceeded => "the publisher owns Broker:MaxRetainedMessages or Broker:MaxRetainedBytes of retained messages already; delivered, not retained",
        _ => reason.ToString(),
    };

    public void OnProtocolViolation(ClientEndpoint endpoint, string? clientId, byte reasonCode, string message)
    {
        var timedOut = reasonCode is ReasonCode.MaximumConnectTime or ReasonCode.KeepAliveTimeout;
        var total = timedOut ? metrics.ConnectionTimedOut() : metrics.PacketRefused();
        // The core knows its limits by value; the log names the setting that changes them.
        var explained = reasonCode switch
        {
            ReasonCode.PacketTooLarge => $"{message} (exceeds Broker:MaxPacketSize {options.Value.MaxPacketSize})",
            _ when timedOut => $"{message} (Broker:ReadTimeout)",
            _ => message,
        };
        // The core's message may quote what the client sent (a topic): escaped like every other client text.
        Report(total, () => LogClosed(endpoint.RemoteAddress, clientId is null ? "" : $" (client {Printable(clientId)})", Printable(explained, 200)));
    }

    public void OnMessagePublished(ClientContext client, ApplicationMessage message)
    {
        metrics.MessageIn();
        if (tap.IsWatched)
        {
            tap.Offer(Tapped(message, client.ClientId));
        }
    }

    /// <summary>A message as the dashboard's message view shows it (the start of its payload).</summary>
    internal static Nightlight.Mqtt.TappedMessage Tapped(ApplicationMessage message, string senderClientId)
    {
        var payload = message.Payload.Span;
        var kept = payload[..Math.Min(payload.Length, Nightlight.Mqtt.BrokerMessageTap.MaxPayloadBytes)].ToArray();
        return new(DateTimeOffset.UtcNow, message.Topic, kept, payload.Length, message.QoS, message.Retain, senderClientId);
    }

    /// <summary>A client publishes faster than its limit and is read more slowly: counted, one line now and then.</summary>
    public void OnPublishThrottled(ClientContext client)
    {
        var total = metrics.PublishThrottled();
        if (total == 1 || total % 10_000 == 0)
        {
            LogThrottled(Printable(client.ClientId), client.Endpoint.RemoteAddress, client.Limits.MaxPublishRate, total);
        }
    }

    void Report(long total, Action log)
    {
        if (_logBudget.TryTake(out var suppressed))
        {
            if (suppressed > 0)
            {
                LogSuppressed(suppressed, total);
            }
            log();
        }
    }

    // Hostile topics carry control characters and megabytes; the log gets a short, escaped version.
    internal static string Printable(string? text, int maxLength = 80)
    {
        if (string.IsNullOrEmpty(text))
        {
            return "(empty)";
        }
        var builder = new StringBuilder();
        foreach (var c in text.Length > maxLength ? text[..maxLength] : text)
        {
            builder.Append(char.IsControl(c) ? $"\\u{(int)c:x4}" : c);
        }
        return text.Length > maxLength ? builder.Append($"... ({text.Length} characters)").ToString() : builder.ToString();
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "{Suppressed} more refusals were not logged (more than 10 a second); {Total} of this kind so far")]
    partial void LogSuppressed(long suppressed, long total);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Refused connection of client {ClientId} (user {UserName}) from {Endpoint}: {Reason}")]
    partial void LogConnectionRefused(string clientId, string userName, string? endpoint, string reason);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Refused publish of client {ClientId} to {Topic}: {Reason}")]
    partial void LogPublishRefused(string clientId, string topic, string reason);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Refused subscription of client {ClientId} to {Filter}: {Reason}")]
    partial void LogSubscriptionRefused(string clientId, string filter, string reason);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Closed connection from {Endpoint}{Client}: {Reason}")]
    partial void LogClosed(string endpoint, string client, string reason);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Dropped a message on {Topic} for client {ClientId}: {Reason} ({Total} dropped so far)")]
    partial void LogDropped(string clientId, string topic, string reason, long total);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Client {ClientId} at {Endpoint} publishes faster than Broker:MaxPublishRate {Rate}/s; reading it more slowly ({Total} publishes held back so far)")]
    partial void LogThrottled(string clientId, string endpoint, int rate, long total);

    [LoggerMessage(Level = LogLevel.Debug, Message = "Client {ClientId} connected on {Listener} from {Endpoint} ({Version}, session present {SessionPresent})")]
    partial void LogConnected(string clientId, string listener, string endpoint, MqttVersion version, bool sessionPresent);

    [LoggerMessage(Level = LogLevel.Debug, Message = "Client {ClientId} disconnected ({Kind})")]
    partial void LogDisconnected(string clientId, DisconnectKind kind);
}
