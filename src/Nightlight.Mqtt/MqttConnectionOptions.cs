using Nightlight.Protocol;

namespace Nightlight.Mqtt;

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

    /// <summary>
    /// With <see cref="CleanSession"/> false over MQTT 5: how long the broker keeps the session after the connection
    /// closes. Null keeps it for as long as the broker allows.
    /// </summary>
    public TimeSpan? SessionExpiry { get; set; }

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

    /// <summary>
    /// Options from configuration text, as every Nightlight client reads it: <paramref name="brokers"/> and
    /// <paramref name="protocol"/> as <see cref="ConnectionSettings"/> parses them, an empty user name or file as none.
    /// </summary>
    /// <param name="brokers"><c>mqtt://a:1883,mqtt://b:1884</c>.</param>
    /// <param name="clientId">MQTT client id.</param>
    /// <param name="protocol"><c>auto</c> (also for null or empty), <c>3.1.1</c> or <c>5</c>.</param>
    /// <param name="username">User name; null or empty for anonymous.</param>
    /// <param name="password">Password for <paramref name="username"/>.</param>
    /// <param name="brokerStart">The in-process broker to wait for before the first attempt, if it runs in this process.</param>
    /// <param name="useTls">TLS even for <c>mqtt://</c> addresses (see <see cref="UseTls"/>).</param>
    /// <param name="caFile">PEM certificate authority of the broker's certificate (see <see cref="CaFile"/>).</param>
    /// <param name="clientCertificateFile">PEM client certificate (see <see cref="ClientCertificateFile"/>).</param>
    /// <param name="clientKeyFile">PEM key of the client certificate (see <see cref="ClientKeyFile"/>).</param>
    public static MqttConnectionOptions From(string brokers, string clientId, string? protocol = null, string? username = null,
        string? password = null, BrokerStartSignal? brokerStart = null, bool useTls = false, string? caFile = null,
        string? clientCertificateFile = null, string? clientKeyFile = null) => new()
    {
        Brokers = ConnectionSettings.ParseBrokers(brokers),
        ClientId = clientId,
        Protocol = ConnectionSettings.ParseProtocol(protocol),
        Username = NoneIfEmpty(username),
        Password = password,
        UseTls = useTls,
        CaFile = NoneIfEmpty(caFile),
        ClientCertificateFile = NoneIfEmpty(clientCertificateFile),
        ClientKeyFile = NoneIfEmpty(clientKeyFile),
        WaitBeforeConnecting = brokerStart is null ? null : ct => brokerStart.Started.WaitAsync(ct),
    };

    static string? NoneIfEmpty(string? text) => string.IsNullOrEmpty(text) ? null : text;
}
