using Nightlight.Protocol;

namespace Nightlight.Server.Commands;

/// <summary>A way to devices other than their MQTT commands topic, offered every command by <see cref="CommandSender"/>.</summary>
public interface ICommandRoute
{
    /// <summary>
    /// Takes <paramref name="command"/> when <paramref name="deviceId"/> is reached this way; false leaves it to MQTT.
    /// <paramref name="commandId"/> is the tracked command's id (report its fetch to <see cref="CommandSender.Delivered"/>),
    /// null for a rule's untracked restatement of the LED's state.
    /// </summary>
    bool TryRoute(string deviceId, CommandMessage command, string? commandId);
}
