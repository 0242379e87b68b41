using Microsoft.Extensions.Configuration;
using Nightlight.Security;

namespace Nightlight.Broker;

/// <summary>One way into the broker: how it is named in log lines, what it is bound to and its port.</summary>
/// <param name="Name">The core's name for it (<see cref="Nightlight.Broker.Core.ClientEndpoint.Listener"/>): <c>tcp</c>, <c>tls</c>, <c>ws</c> or <c>wss</c>.</param>
/// <param name="Address">Its address as a client writes it, e.g. <c>ws://0.0.0.0:5000/mqtt</c>.</param>
public sealed record BrokerListener(string Name, string Address, string Bind, int Port)
{
    /// <summary>Only a listener bound to loopback can let clients in without credentials.</summary>
    public bool OnLoopback => BindAddress.IsLoopback(Bind);
}

/// <summary>
/// The broker's listeners: MQTT (<c>Broker:Bind</c>), MQTT over TLS (<c>Broker:TlsBind</c>), WebSocket and secure
/// WebSocket on the HTTP and HTTPS ports (<c>Http:Bind</c>). Anonymous access is decided per listener, so a public
/// HTTP port never opens MQTT over WebSocket to anyone because the MQTT port is on loopback.
/// </summary>
public sealed class BrokerListeners
{
    public BrokerListeners(BrokerOptions broker, IConfiguration configuration)
    {
        var httpBind = configuration.GetValue("Http:Bind", "localhost")!;
        var list = new List<BrokerListener> { new("tcp", $"mqtt://{broker.Bind}:{broker.MqttPort}", broker.Bind, broker.MqttPort) };
        if (broker.EffectiveTlsPort is { } tls)
        {
            list.Add(new("tls", $"mqtts://{broker.EffectiveTlsBind}:{tls}", broker.EffectiveTlsBind, tls));
        }
        if (configuration.GetValue<int?>("Http:Port") is { } http)
        {
            list.Add(new("ws", $"ws://{httpBind}:{http}{EmbeddedBrokerExtensions.WebSocketPath}", httpBind, http));
        }
        if (configuration.GetValue<int?>("Http:HttpsPort") is { } https)
        {
            list.Add(new("wss", $"wss://{httpBind}:{https}{EmbeddedBrokerExtensions.WebSocketPath}", httpBind, https));
        }
        All = list;
        // A connection on no listener of this list (WebSocket with no Http:Port configured) gets the strictest answer.
        _unknownOnLoopback = list.All(l => l.OnLoopback) && BindAddress.IsLoopback(httpBind);
    }

    readonly bool _unknownOnLoopback;

    public IReadOnlyList<BrokerListener> All { get; }

    /// <summary>The listener named <paramref name="name"/> (<c>tcp</c>, <c>tls</c>, <c>ws</c>, <c>wss</c>); null for another (<c>memory</c>).</summary>
    public BrokerListener? ByName(string name)
    {
        // Asked on every PUBLISH of an anonymous client: indexed, so no enumerator is allocated.
        for (var i = 0; i < All.Count; i++)
        {
            if (All[i].Name == name)
            {
                return All[i];
            }
        }
        return null;
    }

    /// <summary>
    /// Whether <paramref name="listener"/> is on loopback. A connection whose listener is unknown (a port chosen by the
    /// system) counts as loopback only when every listener, and the HTTP port, is.
    /// </summary>
    public bool OnLoopback(BrokerListener? listener) => listener?.OnLoopback ?? _unknownOnLoopback;
}
