using System.Collections;
using System.Security.Cryptography;
using System.Text;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using MQTTnet.Protocol;
using MQTTnet.Server;
using Nightlight.Security;

namespace Nightlight.Broker;

/// <summary>
/// Authentication and access control of the embedded broker: who may connect (identities from
/// <see cref="DeviceIdentities"/>, anonymous clients in anonymous mode, clients of this process), and what each may
/// publish and subscribe to (<see cref="AccessPolicy"/>). Every refusal gets the protocol's reason code, a counter
/// and a log line (the first, then one per thousand, so a flood cannot flood the log). Secrets are never logged.
/// </summary>
sealed partial class BrokerAccess(DeviceIdentities identities, DeviceCertificateAuthority authority, IOptions<BrokerOptions> options,
    BrokerListeners listeners, FailureBackoff backoff, BrokerMetrics metrics, RateLimitExemptions exemptions, ILogger<BrokerAccess> logger)
{
    const string PrincipalKey = "nightlight.principal";
    const string ListenerKey = "nightlight.listener";

    /// <summary>The session items of a client living in the broker's process (<see cref="InProcessClients"/>): the in-process identity.</summary>
    internal static System.Collections.IDictionary InProcessSessionItems() => new System.Collections.Hashtable
    {
        [PrincipalKey] = new Principal(PrincipalKind.InProcess, "", AccessPolicy.InProcessUserName),
    };

    readonly byte[]? _inProcessSecret = string.IsNullOrEmpty(options.Value.InProcessSecret) ? null : Encoding.UTF8.GetBytes(options.Value.InProcessSecret);

    /// <summary>
    /// Whether a client without credentials may connect now through <paramref name="listener"/>: only where that
    /// listener is bound to loopback, and only while no identity exists (identities can appear while the broker runs).
    /// </summary>
    public bool AnonymousAllowedOn(BrokerListener? listener)
    {
        var o = options.Value;
        return o.AllowAnonymous ?? (!o.RequireAuthentication && listeners.OnLoopback(listener) && !identities.Exists);
    }

    public async Task ValidateAsync(ValidatingConnectionEventArgs e)
    {
        var userName = string.IsNullOrEmpty(e.UserName) ? null : e.UserName;
        var listener = listeners.ByLocalEndPoint(e.ChannelAdapter?.LocalEndPoint);
        Principal? principal = null;
        string? refusal = null;
        if (e.ClientCertificate is { } certificate)
        {
            // A client certificate (TLS listener) is the identity; a user name, if sent too, must name the same device.
            if (!authority.TryVerify(certificate, out var deviceId, out var problem))
            {
                refusal = problem;
                e.ReasonCode = MqttConnectReasonCode.NotAuthorized;
            }
            else if (DeviceCertificateAuthority.Thumbprint(certificate) is var thumbprint && !identities.HasCertificate(deviceId, thumbprint))
            {
                refusal = $"certificate of '{deviceId}' is revoked or was not issued to it";
                e.ReasonCode = MqttConnectReasonCode.NotAuthorized;
            }
            else if (userName is not null && userName != deviceId)
            {
                refusal = $"user name differs from the certificate's device '{deviceId}'";
                e.ReasonCode = MqttConnectReasonCode.BadUserNameOrPassword;
            }
            else
            {
                principal = new Principal(PrincipalKind.Device, deviceId, userName, thumbprint);
            }
        }
        else if (userName == AccessPolicy.InProcessUserName)
        {
            if (_inProcessSecret is not null && e.RawPassword is { } password && CryptographicOperations.FixedTimeEquals(password, _inProcessSecret))
            {
                principal = new Principal(PrincipalKind.InProcess, "", userName);
            }
            else
            {
                refusal = "wrong in-process credentials";
                e.ReasonCode = MqttConnectReasonCode.BadUserNameOrPassword;
            }
        }
        else if (userName is not null && identities.TryGetRole(userName, out var role))
        {
            if (await identities.VerifyAsync(userName, e.RawPassword, e.CancellationToken))
            {
                principal = new Principal(role == IdentityRole.Server ? PrincipalKind.Server : PrincipalKind.Device, userName, userName);
            }
            else
            {
                refusal = "wrong password";
                e.ReasonCode = MqttConnectReasonCode.BadUserNameOrPassword;
            }
        }
        else if (userName is not null && identities.Exists)
        {
            refusal = "unknown user name";
            e.ReasonCode = MqttConnectReasonCode.BadUserNameOrPassword;
        }
        else if (AnonymousAllowedOn(listener))
        {
            principal = new Principal(PrincipalKind.Anonymous, "", userName);
            e.SessionItems[ListenerKey] = listener;
        }
        else
        {
            refusal = listener is { OnLoopback: false } && identities.Count == 0 && options.Value.AllowAnonymous is null
                ? $"no credentials, and {listener.Address} is not bound to loopback"
                : "no credentials, and this broker requires them";
            e.ReasonCode = MqttConnectReasonCode.NotAuthorized;
        }

        if (principal is not null && !AccessPolicy.ClientIdBelongsTo(principal, e.ClientId))
        {
            refusal = $"client id does not belong to '{principal.Id}'";
            e.ReasonCode = MqttConnectReasonCode.ClientIdentifierNotValid;
            principal = null;
        }
        if (principal is null)
        {
            Report(metrics.ConnectionRefused(), () => LogConnectionRefused(Printable(e.ClientId), Printable(userName ?? "(none)"), e.RemoteEndPoint?.ToString(), refusal ?? "refused"));
            if (e.ReasonCode == MqttConnectReasonCode.BadUserNameOrPassword &&
                backoff.Fail((e.RemoteEndPoint as System.Net.IPEndPoint)?.Address.ToString(), userName) is { } delay && delay > TimeSpan.Zero)
            {
                // The refusal waits; the connection holds no CPU meanwhile, and a guesser's next try comes later.
                await Task.Delay(delay, e.CancellationToken);
            }
            return;
        }
        e.SessionItems[PrincipalKey] = principal;
        if (principal.Kind is PrincipalKind.Server or PrincipalKind.InProcess ||
            (principal.Kind == PrincipalKind.Anonymous && AccessPolicy.IsServerClientId(e.ClientId)))
        {
            // Servers answer every device, so they publish as fast as the fleet does.
            exemptions.Add(e.RemoteEndPoint?.ToString());
        }
    }

    public void InterceptPublish(InterceptingPublishEventArgs e)
    {
        // Messages the broker's own code injects have no sender.
        if (string.IsNullOrEmpty(e.ClientId))
        {
            return;
        }
        var topic = e.ApplicationMessage.Topic;
        var problem = AccessPolicy.CheckTopicName(topic, options.Value.MaxTopicLength);
        if (problem != TopicProblem.None)
        {
            e.ProcessPublish = false;
            e.Response.ReasonCode = MqttPubAckReasonCode.TopicNameInvalid;
            // Wildcards and NUL in a topic name are protocol violations the spec answers by closing (as Mosquitto does).
            e.CloseConnection = problem == TopicProblem.Wildcard || topic.Contains('\0');
            ReportPublishRefused(e.ClientId, topic, $"invalid topic name ({problem})");
            return;
        }
        var principal = Resolve(e.UserName, e.SessionItems);
        if (principal is null || !AccessPolicy.CanPublish(principal, topic))
        {
            e.ProcessPublish = false;
            e.Response.ReasonCode = MqttPubAckReasonCode.NotAuthorized;
            ReportPublishRefused(e.ClientId, topic, principal is null ? "identity no longer valid" : $"not a topic of '{principal.Id}'");
        }
    }

    // Apart from InterceptPublish, whose every call would otherwise allocate the closure over its arguments.
    void ReportPublishRefused(string clientId, string topic, string reason) =>
        Report(metrics.PublishRefused(), () => LogPublishRefused(Printable(clientId), Printable(topic), reason));

    public void InterceptSubscription(InterceptingSubscriptionEventArgs e)
    {
        var filter = e.TopicFilter.Topic ?? "";
        var principal = Resolve(e.UserName, e.SessionItems);
        if (principal is null || !AccessPolicy.CanSubscribe(principal, filter))
        {
            e.ProcessSubscription = false;
            e.Response.ReasonCode = MqttSubscribeReasonCode.NotAuthorized;
            Report(metrics.SubscriptionRefused(), () => LogSubscriptionRefused(Printable(e.ClientId), Printable(filter), principal is null ? "identity no longer valid" : $"not a filter of '{principal.Id}'"));
        }
    }

    // The principal decided at CONNECT, checked again against what changed since: a removed identity, or anonymous
    // access turned off by the first identity added, loses its rights at once.
    Principal? Resolve(string? userName, IDictionary? sessionItems)
    {
        if (sessionItems?[PrincipalKey] is not Principal principal || principal.UserName != (string.IsNullOrEmpty(userName) ? null : userName))
        {
            return null;
        }
        return principal.Kind switch
        {
            PrincipalKind.Anonymous => AnonymousAllowedOn(sessionItems[ListenerKey] as BrokerListener) ? principal : null,
            PrincipalKind.Device when principal.Certificate is { } thumbprint => identities.HasCertificate(principal.Id, thumbprint) ? principal : null,
            PrincipalKind.Device or PrincipalKind.Server => identities.TryGetRole(principal.Id, out _) ? principal : null,
            _ => principal,
        };
    }

    readonly LogBudget _logBudget = new(10);

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

    [LoggerMessage(Level = LogLevel.Warning, Message = "{Suppressed} more refusals were not logged (more than 10 a second); {Total} of this kind so far")]
    partial void LogSuppressed(long suppressed, long total);

    // Hostile topics carry control characters and megabytes; the log gets a short, escaped version.
    static string Printable(string? text)
    {
        if (string.IsNullOrEmpty(text))
        {
            return "(empty)";
        }
        var builder = new StringBuilder();
        foreach (var c in text.Length > 80 ? text[..80] : text)
        {
            builder.Append(char.IsControl(c) ? $"\\u{(int)c:x4}" : c);
        }
        return text.Length > 80 ? builder.Append($"... ({text.Length} characters)").ToString() : builder.ToString();
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "Refused connection of client {ClientId} (user {UserName}) from {Endpoint}: {Reason}")]
    partial void LogConnectionRefused(string clientId, string userName, string? endpoint, string reason);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Refused publish of client {ClientId} to {Topic}: {Reason}")]
    partial void LogPublishRefused(string clientId, string topic, string reason);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Refused subscription of client {ClientId} to {Filter}: {Reason}")]
    partial void LogSubscriptionRefused(string clientId, string filter, string reason);
}
