namespace Nightlight.Mqtt;

/// <summary>A <see cref="ManagedMqttConnection.HoldWrites"/>; disposing it writes what it held. The default holds nothing.</summary>
public readonly struct WriteHold : IDisposable
{
    readonly PublishPipelineAdapter? _adapter;

    internal WriteHold(PublishPipelineAdapter adapter) => _adapter = adapter;

    /// <summary>Ends the hold: what it held is written, unless another hold on the connection is still taken.</summary>
    public void Dispose() => _adapter?.Release();
}
