using System.Net;
using System.Security.Cryptography;
using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;

namespace Nightlight.Security;

/// <summary>
/// The bearer token that guards state-changing HTTP endpoints. Required when <c>Http:Bind</c> is not a loopback
/// address, or whenever <c>Http:Token</c> is set. Without a configured token, one is generated into
/// <c>{data}/http-token</c> (readable by its owner only); the token itself is never logged.
/// </summary>
public sealed class HttpToken
{
    public const string FileName = "http-token";

    readonly byte[]? _token;

    HttpToken(byte[]? token, string? file)
    {
        _token = token;
        File = file;
    }

    /// <summary>False on loopback without a configured token: anyone on this machine may change state.</summary>
    public bool Required => _token is not null;

    /// <summary>Where a generated token was written, to tell the user; null when configured or not required.</summary>
    public string? File { get; }

    public static HttpToken FromConfiguration(IConfiguration configuration)
    {
        var configured = configuration["Http:Token"];
        if (!string.IsNullOrEmpty(configured))
        {
            return new HttpToken(Encoding.UTF8.GetBytes(configured), null);
        }
        if (BindAddress.IsLoopback(configuration["Http:Bind"]))
        {
            return new HttpToken(null, null);
        }
        var path = Path.Combine(DataDirectory.Resolve(configuration), FileName);
        if (!System.IO.File.Exists(path))
        {
            var generated = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(32));
            DataDirectory.WritePrivateFile(path, Encoding.UTF8.GetBytes(generated + "\n"));
        }
        return new HttpToken(Encoding.UTF8.GetBytes(System.IO.File.ReadAllText(path).Trim()), path);
    }

    /// <summary>True when the request carries <c>Authorization: Bearer TOKEN</c> with the right token.</summary>
    public bool Allows(HttpRequest request)
    {
        if (_token is null)
        {
            return true;
        }
        var header = request.Headers.Authorization.ToString();
        const string scheme = "Bearer ";
        if (!header.StartsWith(scheme, StringComparison.OrdinalIgnoreCase))
        {
            return false;
        }
        var presented = Encoding.UTF8.GetBytes(header[scheme.Length..].Trim());
        return CryptographicOperations.FixedTimeEquals(presented, _token);
    }
}

/// <summary>Registers <see cref="HttpToken"/> and puts it on endpoints.</summary>
public static class HttpTokenExtensions
{
    /// <summary>Registers the token from configuration (idempotent).</summary>
    public static IServiceCollection AddNightlightToken(this IServiceCollection services)
    {
        if (!services.Any(s => s.ServiceType == typeof(HttpToken)))
        {
            services.AddSingleton(sp => HttpToken.FromConfiguration(sp.GetRequiredService<IConfiguration>()));
        }
        return services;
    }

    /// <summary>
    /// Requires the Nightlight bearer token on these endpoints (when one is required): 401 with a
    /// <c>WWW-Authenticate: Bearer</c> header otherwise. Put it on every endpoint that changes state.
    /// </summary>
    public static TBuilder RequireNightlightToken<TBuilder>(this TBuilder builder) where TBuilder : IEndpointConventionBuilder
    {
        builder.AddEndpointFilter(async (context, next) =>
        {
            var token = context.HttpContext.RequestServices.GetRequiredService<HttpToken>();
            if (!token.Allows(context.HttpContext.Request))
            {
                context.HttpContext.Response.Headers.WWWAuthenticate = "Bearer";
                return Results.Problem(statusCode: (int)HttpStatusCode.Unauthorized, title: "A bearer token is required (see docs/security.md)");
            }
            return await next(context);
        });
        return builder;
    }
}

/// <summary>Which bind addresses count as loopback.</summary>
public static class BindAddress
{
    /// <summary><c>localhost</c>, <c>127.x.x.x</c> and <c>::1</c>; null or empty means the default, localhost.</summary>
    public static bool IsLoopback(string? bind) =>
        string.IsNullOrWhiteSpace(bind) || string.Equals(bind, "localhost", StringComparison.OrdinalIgnoreCase) ||
        (IPAddress.TryParse(bind, out var address) && IPAddress.IsLoopback(address));
}
