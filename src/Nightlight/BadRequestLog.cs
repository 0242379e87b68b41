using Nightlight.Security;

namespace Nightlight.Cli;

/// <summary>
/// A request Kestrel gives up on while the application reads it (a body over Kestrel's 30 MB limit, a broken chunked
/// body, a client that stops sending) is bad input from the network, not a bug: one warning line with what was wrong
/// and the status it got, at most 10 a second, instead of an "unhandled exception" with a stack trace.
/// </summary>
static class BadRequestLog
{
    public static IApplicationBuilder UseBadRequestLog(this IApplicationBuilder app)
    {
        var logger = app.ApplicationServices.GetRequiredService<ILoggerFactory>().CreateLogger("Nightlight.Http");
        var budget = new LogBudget(10);
        return app.Use(async (context, next) =>
        {
            try
            {
                await next(context);
            }
            catch (BadHttpRequestException e) when (!context.Response.HasStarted)
            {
                if (budget.TryTake(out var suppressed))
                {
                    if (suppressed > 0)
                    {
                        logger.LogWarning("{Suppressed} more refused requests were not logged (more than 10 a second)", suppressed);
                    }
                    logger.LogWarning("Refused {Method} {Path} from {Remote}: {Status} {Problem}", context.Request.Method,
                        Nightlight.Protocol.TelemetryParser.Printable(context.Request.Path.ToString(), 200), context.Connection.RemoteIpAddress, e.StatusCode, e.Message);
                }
                await TypedResults.Problem(statusCode: e.StatusCode, title: "Bad request", detail: e.Message).ExecuteAsync(context);
            }
        });
    }
}
