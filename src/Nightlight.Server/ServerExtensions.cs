using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.DependencyInjection;

namespace Nightlight.Server;

public static class ServerExtensions
{
    /// <summary>Registers the lesson server: options from section <c>Server</c>, metrics, and the background service.</summary>
    public static IHostApplicationBuilder AddNightlightServer(this IHostApplicationBuilder builder)
    {
        builder.Services.AddOptions<ServerOptions>().BindConfiguration(ServerOptions.Section).ValidateDataAnnotations().ValidateOnStart();
        builder.Services.AddSingleton<ServerMetrics>();
        builder.Services.AddSingleton<NightlightServer>();
        builder.Services.AddHostedService(sp => sp.GetRequiredService<NightlightServer>());
        return builder;
    }
}
