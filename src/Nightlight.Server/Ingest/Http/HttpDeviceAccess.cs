using System.Text;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Configuration;
using Nightlight.Security;

namespace Nightlight.Server.Ingest.Http;

/// <summary>Whether a request may act for a device, and if not, the status and reason to answer with.</summary>
/// <param name="Status">200 when allowed, 401 (no or wrong credentials) or 403 (a valid identity acting for another device).</param>
/// <param name="Problem">Why it was refused, for the problem body and the log line; null when allowed.</param>
public readonly record struct DeviceAccessVerdict(int Status, string? Problem)
{
    public bool Allowed => Status == StatusCodes.Status200OK;
}

/// <summary>
/// Who may use the HTTP device endpoints, by the broker's rules: the device credential is the identity's secret
/// from <c>nightlight devices add</c>, sent as <c>Authorization: Basic base64(id:secret)</c> (an MQTT user name and
/// password) or <c>Authorization: Bearer secret</c> (the id is the one in the path). A device acts only for its own
/// id; server identities post no telemetry, as they publish none on MQTT. Without credentials a request is allowed
/// only in anonymous mode, decided as the embedded broker decides it: <c>Broker:AllowAnonymous</c> when set,
/// otherwise while <c>Http:Bind</c> is loopback, <c>Broker:RequireAuthentication</c> is false and no identities file
/// exists.
/// </summary>
public sealed class HttpDeviceAccess(DeviceIdentities identities, IConfiguration configuration)
{
    readonly FailureBackoff _backoff = new();

    /// <summary>Refusals are logged at most 10 a second, so a flood of wrong secrets cannot flood the log.</summary>
    public LogBudget RefusalLog { get; } = new(10);

    /// <summary>The <c>WWW-Authenticate</c> challenge of a 401.</summary>
    public const string Challenge = "Basic realm=\"nightlight devices\", charset=\"UTF-8\"";

    /// <summary>
    /// True when a request without credentials may act for any device. A server that itself logs in to its broker
    /// (<c>Server:Username</c>, not the in-process login of <c>up</c>) serves a broker that requires identities, so it never serves devices anonymously, even
    /// when its own data directory has no identities file.
    /// </summary>
    public bool AnonymousAllowed =>
        configuration.GetValue<bool?>("Broker:AllowAnonymous") ??
        (!configuration.GetValue("Broker:RequireAuthentication", false) && BindAddress.IsLoopback(configuration["Http:Bind"]) && !identities.Exists &&
         configuration["Server:Username"] is null or "" or AccessPolicy.InProcessUserName);

    /// <summary>Checks the request's credentials for <paramref name="deviceId"/>.</summary>
    public async ValueTask<DeviceAccessVerdict> CheckAsync(HttpRequest request, string deviceId, CancellationToken cancellationToken)
    {
        if (!TryReadCredentials(request.Headers.Authorization.ToString(), deviceId, out var user, out var secret, out var malformed))
        {
            return Refuse(StatusCodes.Status401Unauthorized, malformed);
        }
        if (user is null)
        {
            return AnonymousAllowed ? Allow() : Refuse(StatusCodes.Status401Unauthorized, "this server requires device credentials (see docs/protocols.md)");
        }
        if (identities.TryGetRole(user, out var role))
        {
            if (!await identities.VerifyAsync(user, secret, cancellationToken))
            {
                await BackOffAsync(request, user, cancellationToken);
                return Refuse(StatusCodes.Status401Unauthorized, $"wrong secret for '{user}'");
            }
            if (role != IdentityRole.Device)
            {
                return Refuse(StatusCodes.Status403Forbidden, $"'{user}' is a server identity; only a device acts for itself here");
            }
            return user == deviceId ? Allow() : Refuse(StatusCodes.Status403Forbidden, $"device '{user}' may not act for device '{deviceId}'");
        }
        if (identities.Exists)
        {
            await BackOffAsync(request, null, cancellationToken);
            return Refuse(StatusCodes.Status401Unauthorized, $"no identity '{user}'");
        }
        // As on the broker: in anonymous mode, credentials nobody issued are not checked.
        return AnonymousAllowed ? Allow() : Refuse(StatusCodes.Status401Unauthorized, "this server requires device credentials (see docs/protocols.md)");
    }

    // As on the broker: wrong credentials are answered later and later, per address and per identity.
    async Task BackOffAsync(HttpRequest request, string? user, CancellationToken cancellationToken)
    {
        var delay = _backoff.Fail(request.HttpContext.Connection.RemoteIpAddress?.ToString(), user);
        if (delay > TimeSpan.Zero)
        {
            await Task.Delay(delay, cancellationToken);
        }
    }

    static DeviceAccessVerdict Allow() => new(StatusCodes.Status200OK, null);

    static DeviceAccessVerdict Refuse(int status, string? problem) => new(status, problem);

    /// <summary>Reads Basic or Bearer credentials; false (with the reason) when the header is there but unreadable.</summary>
    static bool TryReadCredentials(string header, string deviceId, out string? user, out byte[]? secret, out string problem)
    {
        user = null;
        secret = null;
        problem = "";
        if (string.IsNullOrWhiteSpace(header))
        {
            return true;
        }
        const string basic = "Basic ";
        const string bearer = "Bearer ";
        if (header.StartsWith(bearer, StringComparison.OrdinalIgnoreCase))
        {
            user = deviceId;
            secret = Encoding.UTF8.GetBytes(header[bearer.Length..].Trim());
            return true;
        }
        if (header.StartsWith(basic, StringComparison.OrdinalIgnoreCase))
        {
            var encoded = header[basic.Length..].Trim();
            var bytes = new byte[encoded.Length];
            if (!Convert.TryFromBase64String(encoded, bytes, out var length))
            {
                problem = "the Basic credentials are not base64";
                return false;
            }
            var text = Encoding.UTF8.GetString(bytes, 0, length);
            var colon = text.IndexOf(':');
            if (colon <= 0)
            {
                problem = "the Basic credentials are not id:secret";
                return false;
            }
            user = text[..colon];
            secret = Encoding.UTF8.GetBytes(text[(colon + 1)..]);
            return true;
        }
        problem = "the Authorization header is neither Basic nor Bearer";
        return false;
    }
}
