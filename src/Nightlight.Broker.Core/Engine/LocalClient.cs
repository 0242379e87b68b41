namespace Nightlight.Broker.Core.Engine;

/// <summary>An in-process client of <see cref="MqttBroker"/>: publishes through the same routing as a network client, without encoding.</summary>
public sealed class LocalClient : IDisposable
{
    internal LocalClient(string clientId) => ClientId = clientId;

    public string ClientId { get; }

    public bool IsConnected { get; private set; } = true;

    public void Publish(ApplicationMessage message) => throw new NotImplementedException();

    public void Dispose() => IsConnected = false;
}
