using System.Buffers;
using MQTTnet.Protocol;
using Nightlight.Mqtt;

namespace Nightlight.Broker;

/// <summary>
/// Offers the server of this process a link to the embedded broker in memory (<see cref="InProcessClients"/>), so its
/// telemetry, acknowledgements and presence arrive without an MQTT connection and its commands leave without one.
/// </summary>
sealed class InProcessBroker(InProcessClients clients) : IInProcessBroker
{
    public IBrokerLink CreateLink(string clientId, LinkPresence? presence = null) => new InProcessBrokerLink(clients, clientId, presence);
}

/// <summary>
/// The server's link as an <see cref="InProcessClient"/>. Subscriptions are collected until <see cref="StartAsync"/>
/// and then fixed: the server subscribes once, before it starts. Its presence, when given, is announced once started and
/// withdrawn when disposed; it needs no last will, since the broker stops with this process.
/// </summary>
sealed class InProcessBrokerLink(InProcessClients clients, string clientId, LinkPresence? presence = null) : IBrokerLink
{
    readonly List<string> _filters = [];
    InProcessClient? _client;

    // Without the client id: an internal name, and `up` prints this line on the learner's terminal.
    public string Description => "the embedded broker in this process";

    public bool IsConnected => _client?.IsConnected ?? false;

    public bool ReceivesOnBrokerPath => true;

    public Func<string, ReadOnlySequence<byte>, Task>? MessageReceived { get; set; }

    public Task SubscribeAsync(string filter, MqttQualityOfServiceLevel qos, CancellationToken cancellationToken)
    {
        if (_client is not null)
        {
            throw new InvalidOperationException("The in-process link takes its subscriptions before it starts");
        }
        // QoS does not apply in memory: nothing is lost between the broker's publish path and the handler.
        _filters.Add(filter);
        return Task.CompletedTask;
    }

    public async Task StartAsync(CancellationToken cancellationToken)
    {
        _client = clients.Create(clientId, _filters, Receive);
        await _client.StartAsync(cancellationToken).ConfigureAwait(false);
        if (presence is not null)
        {
            await _client.TryPublishRetainedAsync(presence.Topic, presence.Online, cancellationToken).ConfigureAwait(false);
        }
    }

    void Receive(string topic, ReadOnlySequence<byte> payload)
    {
        // The server's handler for this link never waits (ReceivesOnBrokerPath): its task is already complete.
        _ = MessageReceived?.Invoke(topic, payload);
    }

    public Task<bool> TryPublishAsync(string topic, ReadOnlyMemory<byte> payload, MqttQualityOfServiceLevel qos = MqttQualityOfServiceLevel.AtMostOnce,
        CancellationToken cancellationToken = default) =>
        _client is { } client ? client.TryPublishAsync(topic, payload, qos, cancellationToken) : Task.FromResult(false);

    public async ValueTask DisposeAsync()
    {
        if (presence is not null && _client is { IsConnected: true } client)
        {
            await client.TryPublishRetainedAsync(presence.Topic, presence.Offline, CancellationToken.None).ConfigureAwait(false);
        }
        _client?.Dispose();
    }
}
