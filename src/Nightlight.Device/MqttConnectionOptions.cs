using Nightlight.Protocol;

namespace Nightlight.Device;

/// <summary>Which MQTT protocol version a client speaks.</summary>
public enum MqttProtocol
{
    /// <summary>Try MQTT 5.0; when the broker refuses or drops that, fall back to 3.1.1 and stay there.</summary>
    Auto,

    /// <summary>MQTT 3.1.1 only (the lesson's paho-mqtt 1.x and Arduino PubSubClient speak this).</summary>
    V311,

    /// <summary>MQTT 5.0 only.</summary>
    V500,
}

/// <summary>A retained message the broker publishes for a client that vanishes without saying goodbye.</summary>
/// <param name="Topic">Topic of the last will.</param>
/// <param name="Payload">Its payload.</param>
public sealed record LastWill(string Topic, byte[] Payload);

/// <summary>How a <see cref="ManagedMqttConnection"/> reaches its broker and behaves when the link drops.</summary>
public sealed class MqttConnectionOptions
{
    /// <summary>Brokers to use, tried in order; on a lost connection the next one is tried.</summary>
    public IReadOnlyList<BrokerAddress> Brokers { get; set; } = [BrokerAddress.Parse("mqtt://localhost:1883")];

    /// <summary>MQTT client id. Required.</summary>
    public string ClientId { get; set; } = "";

    /// <summary>Protocol version; default <see cref="MqttProtocol.Auto"/>.</summary>
    public MqttProtocol Protocol { get; set; } = MqttProtocol.Auto;

    /// <summary>How long one connection attempt may take. Default 10 s.</summary>
    public TimeSpan ConnectTimeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>MQTT keep-alive period. Default 30 s; the broker drops a silent client after 1.5 × this.</summary>
    public TimeSpan KeepAlive { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>True for a clean session (the lesson's default); false keeps the broker-side session.</summary>
    public bool CleanSession { get; set; } = true;

    /// <summary>First wait before reconnecting. Doubles each failed try up to <see cref="ReconnectMaxDelay"/>.</summary>
    public TimeSpan ReconnectMinDelay { get; set; } = TimeSpan.FromMilliseconds(250);

    /// <summary>Longest wait between reconnect attempts. Default 30 s.</summary>
    public TimeSpan ReconnectMaxDelay { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>User name for brokers that authenticate; null for anonymous.</summary>
    public string? Username { get; set; }

    /// <summary>Password for <see cref="Username"/>.</summary>
    public string? Password { get; set; }

    /// <summary>True to speak TLS to the broker (usually port 8883). Default false; <c>mqtts://</c> and <c>wss://</c> addresses use TLS anyway.</summary>
    public bool UseTls { get; set; }

    /// <summary>
    /// PEM file with the certificate authority that signed the broker's certificate, for brokers with a private CA;
    /// null trusts the system's certificate store. Only used with <see cref="UseTls"/>.
    /// </summary>
    public string? CaFile { get; set; }

    /// <summary>True to accept any broker certificate (tests and labs only: it defeats TLS's protection). Default false.</summary>
    public bool AllowUntrustedCertificates { get; set; }

    /// <summary>PEM file with this client's certificate, for brokers that authenticate clients by certificate.</summary>
    public string? ClientCertificateFile { get; set; }

    /// <summary>PEM file with the private key of <see cref="ClientCertificateFile"/>; null when the certificate file holds it.</summary>
    public string? ClientKeyFile { get; set; }

    /// <summary>Optional last will, published by the broker when this client vanishes.</summary>
    public LastWill? Will { get; set; }

    /// <summary>
    /// True to run <see cref="ManagedMqttConnection.MessageReceived"/> on the connection's receive loop, with no thread
    /// hop per message, and to send the answers made meanwhile together (a server's answers to its devices). The
    /// handler must then not wait for the broker, for example for the PUBACK of a QoS 1 publish: that PUBACK would be
    /// read only after the handler returned. Default false (the handler runs on a task of its own, as in MQTTnet).
    /// </summary>
    public bool DeliverOnReceiveLoop { get; set; }

    /// <summary>Awaited before the first connection attempt: an in-process broker that is still starting.</summary>
    public Func<CancellationToken, Task>? WaitBeforeConnecting { get; set; }
}
