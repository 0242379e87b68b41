namespace Nightlight.Broker.Core;

/// <summary>What the core enforces for every client; the host fills it from the <c>Broker</c> configuration section.</summary>
public sealed class BrokerCoreOptions
{
    /// <summary>Largest packet accepted, in bytes, fixed header included; larger ones close the connection (PacketTooLarge). Default 256 KiB.</summary>
    public int MaxPacketSize { get; set; } = 256 * 1024;

    /// <summary>Longest topic name or filter, in UTF-8 bytes. Default 256.</summary>
    public int MaxTopicLength { get; set; } = 256;

    /// <summary>QoS 1 and 2 publishes a client may have in flight towards the broker (CONNACK receive maximum). Default 1,000.</summary>
    public ushort ReceiveMaximum { get; set; } = 1000;

    /// <summary>Highest topic alias a client may use towards the broker (CONNACK topic alias maximum). Default 64.</summary>
    public ushort TopicAliasMaximum { get; set; } = 64;

    /// <summary>Longest session expiry a client may ask for, in seconds; longer requests are cut to it. Default 7 days.</summary>
    public uint MaxSessionExpiry { get; set; } = 7 * 24 * 3600;

    /// <summary>Server keep-alive (5): a client asking for more, or for none, is told this many seconds (0: accept the client's). Default 0.</summary>
    public ushort ServerKeepAlive { get; set; }

    /// <summary>How long a new connection may take to send CONNECT. Default 10 s.</summary>
    public TimeSpan ConnectTimeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>How long a packet may take to arrive once its first byte has; slower ones close the connection. Default 10 s.</summary>
    public TimeSpan PacketTimeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>
    /// Messages a session restored from the store may queue until its client connects again and the host gives it its own
    /// limits. Default 1,000.
    /// </summary>
    public int RestoredSessionQueueLimit { get; set; } = 1000;

    /// <summary>Bytes queued on one connection before the engine holds further messages in the session's queue instead. Default 1 MiB.</summary>
    public long MaxPendingBytesPerConnection { get; set; } = 1024 * 1024;
}
