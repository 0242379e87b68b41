using System.Net;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Nightlight.Security;

namespace Nightlight.Web;

/// <summary>
/// Refuses requests whose <c>Host</c> (or, from a browser, <c>Origin</c>) names something the HTTP port is not bound
/// to. On a loopback bind only loopback names pass (<c>localhost</c>, <c>*.localhost</c>, <c>127.x</c>, <c>[::1]</c>), so a
/// site whose name was rebound to 127.0.0.1 (DNS rebinding), or any page open in the browser, cannot drive the
/// dashboard, the CounterFit API or MQTT over WebSocket. A specific IP bind accepts that IP too; <c>0.0.0.0</c> names
/// every interface, so any Host passes there and the token guards state changes.
/// </summary>
public static partial class HostCheck
{
    public static IApplicationBuilder UseNightlightHostCheck(this IApplicationBuilder app)
    {
        var bind = app.ApplicationServices.GetRequiredService<IConfiguration>().GetValue("Http:Bind", "localhost")!;
        var logger = app.ApplicationServices.GetRequiredService<ILoggerFactory>().CreateLogger(typeof(HostCheck));
        var budget = new LogBudget(10);
        return app.Use(async (context, next) =>
        {
            var host = context.Request.Host.Host;
            var origin = context.Request.Headers.Origin.ToString();
            string? refused = !Allowed(bind, host) ? $"Host '{host}'"
                : origin.Length > 0 && origin != "null" && !(Uri.TryCreate(origin, UriKind.Absolute, out var uri) && Allowed(bind, uri.Host)) ? $"Origin '{origin}'"
                : origin == "null" ? "Origin 'null'" : null;
            if (refused is null)
            {
                await next(context);
                return;
            }
            if (budget.TryTake(out var suppressed))
            {
                LogRefused(logger, context.Request.Method, context.Request.Path.ToString(), refused.Length > 100 ? refused[..100] : refused, bind, suppressed);
            }
            context.Response.StatusCode = StatusCodes.Status421MisdirectedRequest;
            await context.Response.WriteAsync($"{refused} is not a name this server is bound to (Http:Bind {bind})");
        });
    }

    /// <summary>True when <paramref name="host"/> names what <paramref name="bind"/> listens on.</summary>
    public static bool Allowed(string bind, string host)
    {
        host = host.Trim('[', ']');
        if (host.Length == 0)
        {
            return false;
        }
        if (bind is "*" or "0.0.0.0" or "::")
        {
            return true;
        }
        if (string.Equals(host, "localhost", StringComparison.OrdinalIgnoreCase) || host.EndsWith(".localhost", StringComparison.OrdinalIgnoreCase) ||
            (IPAddress.TryParse(host, out var address) && IPAddress.IsLoopback(address)))
        {
            return BindAddress.IsLoopback(bind) || IPAddress.TryParse(bind, out _);
        }
        return IPAddress.TryParse(host, out var hostAddress) && IPAddress.TryParse(bind, out var bound) && hostAddress.Equals(bound);
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "Refused {Method} {Path}: {What} does not name this server (Http:Bind {Bind}); {Suppressed} more refusals were not logged before this one")]
    static partial void LogRefused(ILogger logger, string method, string path, string what, string bind, long suppressed);
}
