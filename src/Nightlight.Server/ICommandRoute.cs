using Nightlight.Protocol;

namespace Nightlight.Server;

/// <summary>A way to devices other than their MQTT commands topic, offered every command by <see cref="CommandDispatcher"/>.</summary>
public interface ICommandRoute
{
    /// <summary>
    /// Takes <paramref name="command"/> when <paramref name="deviceId"/> is reached this way; false leaves it to MQTT.
    /// <paramref name="commandId"/> is the tracked command's id (report its fetch to <see cref="CommandDispatcher.Delivered"/>),
    /// null for a rule's untracked restatement of the LED's state.
    /// </summary>
    bool TryRoute(string deviceId, CommandMessage command, string? commandId);
}
