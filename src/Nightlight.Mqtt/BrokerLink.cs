using System.Buffers;
using MQTTnet.Protocol;

namespace Nightlight.Mqtt;

/// <summary>
/// The server's link to its broker: what it reads (telemetry, acknowledgements, presence) and how its commands leave.
/// Two kinds: <see cref="MqttBrokerLink"/>, an MQTT connection to any broker, and the in-process link a host offers
/// through <see cref="IInProcessBroker"/> when the embedded broker runs in the same process.
/// </summary>
public interface IBrokerLink : IAsyncDisposable
{
    /// <summary>Where the link goes, for the start-up line.</summary>
    string Description { get; }

    /// <summary>True while commands can be published.</summary>
    bool IsConnected { get; }

    /// <summary>
    /// True when messages are handed over on the broker's own receive path: the handler must read the payload before
    /// it returns and must not wait (a full queue is counted, not waited on). False for an MQTT connection, where
    /// waiting slows the connection down.
    /// </summary>
    bool ReceivesOnBrokerPath { get; }

    /// <summary>Called with each message matching a subscription. Set before <see cref="StartAsync"/>.</summary>
    Func<string, ReadOnlySequence<byte>, Task>? MessageReceived { get; set; }

    /// <summary>
    /// Called by <see cref="MessageReceived"/> for a message it will acknowledge later (once stored): the broker's
    /// acknowledgement waits until the returned action runs. Null when there is nothing to hold back (in process, QoS 0).
    /// </summary>
    Action? DeferAcknowledgement() => null;

    /// <summary>Adds a subscription; made when the link starts, and again after each reconnect.</summary>
    Task SubscribeAsync(string filter, MqttQualityOfServiceLevel qos, CancellationToken cancellationToken);

    /// <summary>Connects (or attaches) and subscribes; retained messages matching the subscriptions arrive as MQTT sends them.</summary>
    Task StartAsync(CancellationToken cancellationToken);

    /// <summary>
    /// Publishes; false, without throwing, when there is no link. True means the broker accepted it: with QoS 1 over
    /// MQTT, its PUBACK; with QoS 0, written to the connection; in process, queued to every matching subscriber.
    /// </summary>
    Task<bool> TryPublishAsync(string topic, ReadOnlyMemory<byte> payload, MqttQualityOfServiceLevel qos = MqttQualityOfServiceLevel.AtMostOnce,
        CancellationToken cancellationToken = default);

    /// <summary>
    /// Holds the link's publishes back until the returned hold is disposed, so a run of them leaves together (see
    /// <see cref="ManagedMqttConnection.HoldWrites"/>). In process there is nothing to hold.
    /// </summary>
    WriteHold HoldWrites() => default;

    /// <summary>
    /// <see cref="TryPublishAsync"/> in two steps: completes once the publish has left, so publishes made one after
    /// another leave (and reach a device) in that order, with a task of what <see cref="TryPublishAsync"/> returns. Over
    /// MQTT at QoS 1 the caller can go on before the broker's PUBACK; by default the publish is awaited whole.
    /// </summary>
    async Task<Task<bool>> PublishInOrderAsync(string topic, ReadOnlyMemory<byte> payload, MqttQualityOfServiceLevel qos,
        CancellationToken cancellationToken = default) =>
        Task.FromResult(await TryPublishAsync(topic, payload, qos, cancellationToken).ConfigureAwait(false));
}

/// <summary>
/// A retained presence a link keeps on <paramref name="Topic"/>: <paramref name="Online"/> published (QoS 1, retained) each
/// time the link is up, <paramref name="Offline"/> when it closes cleanly and, over MQTT, as its last will.
/// </summary>
public sealed record LinkPresence(string Topic, byte[] Online, byte[] Offline);

/// <summary>A broker in this process that the server can attach to in memory, offered by the host (<c>nightlight up</c>).</summary>
public interface IInProcessBroker
{
    /// <summary>A link whose publishes carry <paramref name="clientId"/> as their sender, keeping <paramref name="presence"/> when given.</summary>
    IBrokerLink CreateLink(string clientId, LinkPresence? presence = null);
}

/// <summary>
/// A link over MQTT: a <see cref="ManagedMqttConnection"/>, which this link owns and disposes. With a
/// <see cref="LinkPresence"/> (whose last will the connection's options must carry) it announces itself after every
/// connect and says offline before a clean close.
/// </summary>
public sealed class MqttBrokerLink : IBrokerLink
{
    readonly ManagedMqttConnection connection;
    readonly LinkPresence? _presence;

    /// <summary>A link on <paramref name="connection"/>, keeping <paramref name="presence"/> when given (it sets the connection's <c>Connected</c>).</summary>
    public MqttBrokerLink(ManagedMqttConnection connection, LinkPresence? presence = null)
    {
        this.connection = connection;
        _presence = presence;
        if (presence is not null)
        {
            connection.Connected = _ => connection.TryPublishAsync(presence.Topic, presence.Online, MqttQualityOfServiceLevel.AtLeastOnce, retain: true);
        }
    }

    /// <inheritdoc/>
    public string Description => connection.CurrentBroker.ToString();

    /// <inheritdoc/>
    public bool IsConnected => connection.IsConnected;

    /// <inheritdoc/>
    public bool ReceivesOnBrokerPath => false;

    /// <inheritdoc/>
    public Func<string, ReadOnlySequence<byte>, Task>? MessageReceived
    {
        get => connection.MessageReceived;
        set => connection.MessageReceived = value;
    }

    /// <inheritdoc/>
    public Action? DeferAcknowledgement() => connection.DeferAcknowledgement();

    /// <inheritdoc/>
    public Task SubscribeAsync(string filter, MqttQualityOfServiceLevel qos, CancellationToken cancellationToken) =>
        connection.SubscribeAsync(filter, qos, cancellationToken);

    /// <inheritdoc/>
    public Task StartAsync(CancellationToken cancellationToken) => connection.StartAsync(cancellationToken);

    /// <inheritdoc/>
    public WriteHold HoldWrites() => connection.HoldWrites();

    /// <inheritdoc/>
    public Task<bool> TryPublishAsync(string topic, ReadOnlyMemory<byte> payload, MqttQualityOfServiceLevel qos = MqttQualityOfServiceLevel.AtMostOnce,
        CancellationToken cancellationToken = default) =>
        connection.TryPublishAsync(topic, payload, qos, cancellationToken: cancellationToken);

    /// <inheritdoc/>
    public Task<Task<bool>> PublishInOrderAsync(string topic, ReadOnlyMemory<byte> payload, MqttQualityOfServiceLevel qos,
        CancellationToken cancellationToken = default) =>
        connection.PublishInOrderAsync(topic, payload, qos, cancellationToken: cancellationToken);

    /// <inheritdoc/>
    public async ValueTask DisposeAsync()
    {
        if (_presence is not null && connection.IsConnected)
        {
            // A clean disconnect does not fire the last will: say it ourselves.
            await connection.TryPublishAsync(_presence.Topic, _presence.Offline, MqttQualityOfServiceLevel.AtLeastOnce, retain: true).ConfigureAwait(false);
        }
        await connection.DisposeAsync().ConfigureAwait(false);
    }
}
