using Nightlight.Protocol;

namespace Nightlight.Server.Ingest.Http;

/// <summary>
/// What HTTP devices send and are sent, for watchers in the same process: the dashboard sees MQTT devices on the
/// broker, and HTTP devices' traffic never passes the broker. Handlers run on the request's thread: keep them short.
/// </summary>
public sealed class HttpDeviceEvents
{
    /// <summary>A reading posted over HTTP was accepted into the server's path.</summary>
    public event Action<TelemetryMessage>? Reading;

    /// <summary>A command was queued for an HTTP device.</summary>
    public event Action<string, CommandMessage>? Command;

    internal void ReadingAccepted(TelemetryMessage reading) => Reading?.Invoke(reading);

    internal void CommandQueued(string deviceId, CommandMessage command) => Command?.Invoke(deviceId, command);
}
