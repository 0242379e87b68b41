using System.Net;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http.Connections;
using Microsoft.AspNetCore.Routing;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using MQTTnet.AspNetCore;
using MQTTnet.Server;

namespace Nightlight.Broker;

/// <summary>Registers the embedded MQTT broker: MQTT over TCP on <c>Broker:MqttPort</c>, over WebSocket at <c>/mqtt</c>.</summary>
public static class EmbeddedBrokerExtensions
{
    /// <summary>The WebSocket path of MQTT on the HTTP port.</summary>
    public const string WebSocketPath = "/mqtt";

    public static WebApplicationBuilder AddEmbeddedBroker(this WebApplicationBuilder builder)
    {
        builder.Services.AddOptions<BrokerOptions>().BindConfiguration(BrokerOptions.Section).ValidateDataAnnotations().ValidateOnStart();
        var options = builder.Configuration.GetSection(BrokerOptions.Section).Get<BrokerOptions>() ?? new BrokerOptions();

        var dataDirectory = Nightlight.Security.DataDirectory.Resolve(builder.Configuration);
        // Created before anything writes into it (identities, keys, the database), so its files are the owner's alone.
        Nightlight.Security.DataDirectory.CreatePrivate(dataDirectory);
        builder.Services.AddSingleton(Nightlight.Security.DeviceIdentities.InDirectory(dataDirectory));
        builder.Services.AddSingleton(new Nightlight.Security.DeviceCertificateAuthority(dataDirectory));
        builder.Services.AddSingleton(new BrokerListeners(options, builder.Configuration));
        builder.Services.AddSingleton<Nightlight.Security.FailureBackoff>();
        builder.Services.AddSingleton<BrokerAccess>();
        builder.Services.AddSingleton<RateLimitExemptions>();
        builder.Services.AddSingleton<ConnectionRateLimit>();
        builder.Services.AddSingleton<MqttFrameGuard>();
        // HTTPS (Http:HttpsPort) serves the same pages and MQTT over secure WebSocket with the TLS listener's certificate.
        var tls = BrokerTls.Create(options, dataDirectory, builder.Configuration.GetValue<int?>("Http:HttpsPort"));
        builder.Services.AddSingleton(tls);
        builder.Services.AddSingleton<BrokerMetrics>();
        builder.Services.AddSingleton<Nightlight.Mqtt.BrokerMessageTap>();
        builder.Services.AddSingleton<LessonPlaceholder>();
        builder.Services.AddSingleton<TopicRouter>();
        builder.Services.AddSingleton<InProcessClients>();
        builder.Services.AddSingleton<Nightlight.Mqtt.BrokerStartSignal>();
        // The server and the dashboard beside the embedded broker attach to it in memory (Server:InProcess).
        builder.Services.AddSingleton<Nightlight.Mqtt.IInProcessBroker, InProcessBroker>();
        builder.Services.AddHostedService<BrokerEvents>();
        builder.Services.AddHostedMqttServer(server =>
        {
            server.WithMaxPendingMessagesPerClient(options.MaxPendingMessagesPerClient)
                .WithPendingMessagesOverflowStrategy(MqttPendingMessagesOverflowStrategy.DropOldestQueuedMessage)
                .WithoutPacketFragmentation()
                // Without it MQTTnet ends every session when its connection closes, clean session or not: a server that
                // restarts lost what was published meanwhile (ServerRestartTests).
                .WithPersistentSessions();
            if (options.Transport == "mqttnet")
            {
                server.WithDefaultEndpoint().WithDefaultEndpointPort(options.MqttPort);
                if (IPAddress.TryParse(options.Bind, out var address))
                {
                    server.WithDefaultEndpointBoundIPAddress(address);
                }
                else
                {
                    server.WithDefaultEndpointBoundIPAddress(IPAddress.Loopback).WithDefaultEndpointBoundIPV6Address(IPAddress.IPv6Loopback);
                }
            }
            else
            {
                server.WithoutDefaultEndpoint();
            }
        });
        builder.Services.AddMqttConnectionHandler();
        builder.Services.AddConnections();
        if (tls.HttpsPort is { } httpsPort)
        {
            var httpBind = builder.Configuration.GetValue("Http:Bind", "localhost")!;
            builder.WebHost.ConfigureKestrel(kestrel => kestrel.Listen(httpBind, httpsPort, listen => listen.UseHttps(tls.HttpsOptions())));
        }
        if (options.Transport == "mqttnet")
        {
            builder.Services.AddMqttTcpServerAdapter();
        }
        else
        {
            builder.WebHost.ConfigureKestrel(kestrel =>
            {
                var guard = kestrel.ApplicationServices.GetRequiredService<MqttFrameGuard>();
                kestrel.Listen(options.Bind, options.MqttPort, listen => listen.Use(guard.Wrap).UseMqtt());
                if (tls.Port is { } tlsPort)
                {
                    // Kestrel's TLS, not MQTTnet's own TLS endpoint (which MQTTnet issue 2270 reports broken in 5.2).
                    kestrel.Listen(options.EffectiveTlsBind, tlsPort, listen =>
                    {
                        listen.UseHttps(tls.HttpsOptions());
                        listen.Use(guard.Wrap).UseMqtt();
                    });
                }
            });
        }
        return builder;
    }

    /// <summary>Maps MQTT over WebSocket at <see cref="WebSocketPath"/>.</summary>
    public static IEndpointRouteBuilder MapEmbeddedBroker(this IEndpointRouteBuilder endpoints)
    {
        // MQTTnet's MapMqtt, with the same frame guard as the TCP listeners in front of the MQTT handler.
        var guard = endpoints.ServiceProvider.GetRequiredService<MqttFrameGuard>();
        endpoints.MapConnections(WebSocketPath, new HttpConnectionDispatcherOptions
        {
            WebSockets = { SubProtocolSelector = MqttSubProtocolSelector.SelectSubProtocol },
        }, connection => connection.Use(guard.Wrap).UseConnectionHandler<MqttConnectionHandler>());
        return endpoints;
    }

    /// <summary>Listens on <paramref name="bind"/>: <c>localhost</c> means both loopback addresses.</summary>
    public static void Listen(this KestrelServerOptions kestrel, string bind, int port, Action<ListenOptions>? configure = null)
    {
        configure ??= _ => { };
        if (string.Equals(bind, "localhost", StringComparison.OrdinalIgnoreCase))
        {
            kestrel.ListenLocalhost(port, configure);
        }
        else if (bind is "*" or "0.0.0.0" or "::")
        {
            kestrel.ListenAnyIP(port, configure);
        }
        else
        {
            kestrel.Listen(IPAddress.Parse(bind), port, configure);
        }
    }
}
