namespace Nightlight.Mqtt;

/// <summary>Completes when the in-process broker accepts connections, so clients in the same process wait for it.</summary>
public sealed class BrokerStartSignal
{
    readonly TaskCompletionSource _started = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>Completes once the broker listens.</summary>
    public Task Started => _started.Task;

    /// <summary>Called by the broker when it listens.</summary>
    public void Signal() => _started.TrySetResult();
}
