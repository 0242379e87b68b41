using System.Net;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http.Connections;
using Microsoft.AspNetCore.Routing;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Nightlight.Broker.Core;
using Nightlight.Broker.Core.Engine;
using Nightlight.Broker.Core.Persistence;
using Nightlight.Protocol;
using Nightlight.Security;

namespace Nightlight.Broker;

/// <summary>
/// Registers the embedded MQTT broker (Nightlight's broker core) on Kestrel: MQTT over TCP on <c>Broker:MqttPort</c>
/// (through <see cref="LeanSocketTransportFactory"/>), over TLS on <c>Broker:TlsPort</c>, over WebSocket at
/// <c>/mqtt</c>; sessions kept in <c>{data}/broker</c>.
/// </summary>
public static class EmbeddedBrokerExtensions
{
    /// <summary>The WebSocket path of MQTT on the HTTP port.</summary>
    public const string WebSocketPath = "/mqtt";

    /// <summary>Where the broker keeps its sessions, inside the data directory.</summary>
    public const string StoreDirectory = "broker";

    public static WebApplicationBuilder AddEmbeddedBroker(this WebApplicationBuilder builder)
    {
        builder.Services.AddOptions<BrokerOptions>().BindConfiguration(BrokerOptions.Section).ValidateDataAnnotations().ValidateOnStart();
        var options = builder.Configuration.GetSection(BrokerOptions.Section).Get<BrokerOptions>() ?? new BrokerOptions();

        var dataDirectory = DataDirectory.Resolve(builder.Configuration);
        // Created before anything writes into it (identities, keys, sessions, the database), so its files are the owner's alone.
        DataDirectory.CreatePrivate(dataDirectory);
        builder.Services.AddSingleton(DeviceIdentities.InDirectory(dataDirectory));
        builder.Services.AddSingleton(new DeviceCertificateAuthority(dataDirectory));
        builder.Services.AddSingleton(new BrokerListeners(options, builder.Configuration));
        builder.Services.AddSingleton<FailureBackoff>();
        builder.Services.AddSingleton<BrokerMetrics>();
        builder.Services.AddSingleton<BrokerAccess>();
        builder.Services.AddSingleton<ConnectionRateLimit>();
        // HTTPS (Http:HttpsPort) serves the same pages and MQTT over secure WebSocket with the TLS listener's certificate.
        var tls = BrokerTls.Create(options, dataDirectory, builder.Configuration.GetValue<int?>("Http:HttpsPort"));
        builder.Services.AddSingleton(tls);
        builder.Services.AddSingleton<Nightlight.Mqtt.BrokerMessageTap>();
        builder.Services.AddSingleton<LessonPlaceholder>();
        builder.Services.AddSingleton<ISessionStore>(services => CreateStore(services.GetRequiredService<IOptions<BrokerOptions>>().Value, dataDirectory,
            services.GetRequiredService<ILoggerFactory>()));
        builder.Services.AddSingleton(services =>
        {
            var o = services.GetRequiredService<IOptions<BrokerOptions>>().Value;
            var core = new BrokerCoreOptions
            {
                MaxPacketSize = o.MaxPacketSize,
                // The protocol's own limit: Broker:MaxTopicLength is a policy, refused (acknowledged, dropped, logged) by BrokerAccess.
                MaxTopicLength = ushort.MaxValue,
                ConnectTimeout = Durations.Parse(o.ReadTimeout, "Broker:ReadTimeout"),
                PacketTimeout = Durations.Parse(o.ReadTimeout, "Broker:ReadTimeout"),
                ServerKeepAlive = (ushort)o.MaxKeepAlive,
            };
            return new MqttBroker(core, services.GetRequiredService<BrokerAccess>(), services.GetRequiredService<ISessionStore>(),
                services.GetRequiredService<ILoggerFactory>().CreateLogger("Nightlight.Broker.Core"));
        });
        builder.Services.AddSingleton<BrokerGauges>();
        builder.Services.AddSingleton<InProcessClients>();
        builder.Services.AddSingleton<Nightlight.Mqtt.BrokerStartSignal>();
        // The server and the dashboard beside the embedded broker attach to it in memory (Server:InProcess).
        builder.Services.AddSingleton<Nightlight.Mqtt.IInProcessBroker, InProcessBroker>();
        builder.Services.AddSingleton<MqttCoreConnectionHandler>();
        builder.Services.AddHostedService<BrokerHost>();
        builder.Services.AddHostedService<IdentityWatch>();
        builder.Services.AddConnections();
        // After Kestrel's own socket transport, so Kestrel asks this one first; it takes only the plain MQTT port.
        builder.Services.AddSingleton<IConnectionListenerFactory, LeanSocketTransportFactory>();
        if (tls.HttpsPort is { } httpsPort)
        {
            var httpBind = builder.Configuration.GetValue("Http:Bind", "localhost")!;
            builder.WebHost.ConfigureKestrel(kestrel => kestrel.Listen(httpBind, httpsPort, listen => listen.UseHttps(tls.HttpsOptions())));
        }
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            // A port out of range is left to the options' validation at start, which names the flag; Kestrel would throw.
            if (options.MqttPort is < IPEndPoint.MinPort + 1 or > IPEndPoint.MaxPort)
            {
                return;
            }
            kestrel.Listen(options.Bind, options.MqttPort, listen => listen.UseConnectionHandler<MqttCoreConnectionHandler>());
            if (tls.Port is { } tlsPort and > IPEndPoint.MinPort and <= IPEndPoint.MaxPort)
            {
                kestrel.Listen(options.EffectiveTlsBind, tlsPort, listen =>
                {
                    listen.UseHttps(tls.HttpsOptions());
                    listen.UseConnectionHandler<MqttCoreConnectionHandler>();
                });
            }
        });
        return builder;
    }

    static ISessionStore CreateStore(BrokerOptions options, string dataDirectory, ILoggerFactory loggers)
    {
        if (!options.Persistence)
        {
            return new NullSessionStore();
        }
        var fsync = options.Fsync switch
        {
            "interval" => StoreFsync.Interval,
            "never" => StoreFsync.Never,
            _ => StoreFsync.Batch,
        };
        return new FileSessionStore(Path.Combine(dataDirectory, StoreDirectory), new FileSessionStoreOptions { Fsync = fsync },
            loggers.CreateLogger("Nightlight.Broker.Store"));
    }

    /// <summary>Maps MQTT over WebSocket at <see cref="WebSocketPath"/> (sub-protocol <c>mqtt</c>, or <c>mqttv3.1</c> from older clients).</summary>
    public static IEndpointRouteBuilder MapEmbeddedBroker(this IEndpointRouteBuilder endpoints)
    {
        endpoints.MapConnectionHandler<MqttCoreConnectionHandler>(WebSocketPath, dispatcher =>
        {
            dispatcher.Transports = HttpTransportType.WebSockets;
            dispatcher.WebSockets.SubProtocolSelector = SelectSubProtocol;
        });
        return endpoints;
    }

    // "mqtt" (3.1.1 and 5), else "mqttv3.1" (older clients), else what the client asked for first; none when it asked for none.
    static string SelectSubProtocol(IList<string> requested) =>
        requested.Contains("mqtt") ? "mqtt" : requested.Contains("mqttv3.1") ? "mqttv3.1" : requested.Count > 0 ? requested[0] : null!;

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
