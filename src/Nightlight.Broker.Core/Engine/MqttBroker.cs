using System.IO.Pipelines;
using Microsoft.Extensions.Logging;
using Nightlight.Broker.Core.Packets;
using Nightlight.Broker.Core.Persistence;

namespace Nightlight.Broker.Core.Engine;

/// <summary>
/// The broker: sessions, routing, retained messages, wills and expiry behind one facade. The host gives it connections
/// (<see cref="RunConnectionAsync"/>) and in-process clients (<see cref="ConnectLocal"/>); it does not own the store.
/// </summary>
public sealed class MqttBroker : ISessionRegistry, IAsyncDisposable
{
    private readonly BrokerCoreOptions _options;
    private readonly IBrokerHooks _hooks;
    private readonly ISessionStore _store;
    private readonly ILogger _logger;
    private readonly TimeProvider _time;

    public MqttBroker(BrokerCoreOptions options, IBrokerHooks hooks, ISessionStore store, ILogger logger, TimeProvider? time = null)
    {
        _options = options;
        _hooks = hooks;
        _store = store;
        _logger = logger;
        _time = time ?? TimeProvider.System;
    }

    /// <summary>Loads the store's snapshot and starts the timers (session expiry, will delay).</summary>
    public Task StartAsync(CancellationToken ct) => Task.CompletedTask;

    /// <summary>Serves one client connection until it ends.</summary>
    public Task RunConnectionAsync(IDuplexPipe transport, ClientEndpoint endpoint, CancellationToken ct) =>
        throw new NotSupportedException("The connection codec is not merged yet.");

    /// <summary>An in-process client: no encoding; <paramref name="receiver"/> runs on the publishing thread and must not block.</summary>
    public LocalClient ConnectLocal(string clientId, IReadOnlyList<TopicSubscription> subscriptions, LocalReceiver receiver) =>
        throw new NotImplementedException();

    /// <summary>Publishes as the broker itself (no access check).</summary>
    public void Publish(ApplicationMessage message) => throw new NotImplementedException();

    /// <summary>Ends every live connection whose client matches, now; returns how many.</summary>
    public int DisconnectWhere(Func<ClientContext, bool> predicate, byte reasonCode) => 0;

    public BrokerStatistics Statistics => new(0, 0, 0, 0, 0, 0);

    /// <summary>Closes every connection with ServerShuttingDown and commits the store.</summary>
    public Task StopAsync(CancellationToken ct) => Task.CompletedTask;

    public ValueTask<ISessionHandler?> ConnectAsync(ConnectPacket connect, ClientEndpoint endpoint, IClientSink sink, CancellationToken cancellationToken) =>
        throw new NotImplementedException();

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}

/// <summary>Receives a message for an in-process client, on the publisher's thread; must not block.</summary>
public delegate void LocalReceiver(ApplicationMessage message);

/// <summary>A point-in-time view of the broker's counters.</summary>
public sealed record BrokerStatistics(int ConnectedClients, int Sessions, int RetainedMessages, long MessagesReceived, long MessagesDelivered, long MessagesDropped);
