namespace Nightlight.Broker.Core.Persistence;

/// <summary>Keeps nothing: sessions and retained messages live only as long as the process (tests, <c>--data</c> unset).</summary>
public sealed class NullSessionStore : ISessionStore
{
    public static NullSessionStore Instance { get; } = new();

    public BrokerSnapshot Load() => new();

    public void SaveSession(StoredSession session) { }

    public void DeleteSession(string clientId) { }

    public void SaveWill(StoredWill will) { }

    public void DeleteWill(string clientId) { }

    public void SaveMessage(long messageId, ApplicationMessage message) { }

    public void Enqueue(string clientId, StoredDelivery delivery) { }

    public void UpdateDelivery(string clientId, long messageId, ushort packetId, bool released) { }

    public void Complete(string clientId, long messageId) { }

    public void SaveRetained(ApplicationMessage message) { }

    public void DeleteRetained(string topic) { }

    public void SaveInboundQoS2(string clientId, ushort packetId, bool pending) { }

    public ValueTask CommitAsync(CancellationToken cancellationToken = default) => ValueTask.CompletedTask;

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}
