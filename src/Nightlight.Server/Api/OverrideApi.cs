using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.AspNetCore.Routing;
using Nightlight.Security;
using Nightlight.Server.Commands;

namespace Nightlight.Server.Api;

/// <summary>A manual override as the API shows it: the LED state it holds and when the rule decides again.</summary>
public sealed record OverrideView(string DeviceId, bool LedOn, DateTimeOffset Until);

/// <summary>
/// Manual overrides (a command sent by hand holds the device's rule back for a while): which are active, and ending one
/// so the rule decides at the device's next reading.
/// </summary>
public static class OverrideApi
{
    public static IEndpointRouteBuilder MapOverrideApi(this IEndpointRouteBuilder app)
    {
        app.MapGet("/api/overrides", GetOverrides).WithTags("Devices").WithName("GetOverrides")
            .WithSummary("Devices whose rule a manual command holds back, and until when");
        app.MapGet("/api/devices/{id}/override", GetOverride).WithTags("Devices").WithName("GetOverride")
            .WithSummary("The device's manual override, or 404 when the rule decides");
        // Ending an override changes what the server sends: it needs the bearer token when one is configured.
        app.MapDelete("/api/devices/{id}/override", EndOverride).WithTags("Devices").WithName("EndOverride").RequireNightlightToken()
            .WithSummary("End the device's manual override now; its next reading is decided by the rule");
        return app;
    }

    public static Ok<List<OverrideView>> GetOverrides(ManualOverrides overrides) =>
        TypedResults.Ok(overrides.All(DateTimeOffset.UtcNow).Select(ToView).ToList());

    public static Results<Ok<OverrideView>, NotFound> GetOverride(string id, ManualOverrides overrides) =>
        overrides.Current(id, DateTimeOffset.UtcNow) is { } current ? TypedResults.Ok(ToView(current)) : TypedResults.NotFound();

    public static Results<NoContent, ProblemHttpResult> EndOverride(string id, ManualOverrides overrides) =>
        overrides.End(id) ? TypedResults.NoContent()
            : TypedResults.Problem(statusCode: StatusCodes.Status404NotFound, title: "No override", detail: $"No manual override is active for '{id}'.");

    static OverrideView ToView(ManualOverride o) => new(o.DeviceId, o.LedOn, o.Until);
}
