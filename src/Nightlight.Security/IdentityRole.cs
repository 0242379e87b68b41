namespace Nightlight.Security;

/// <summary>What an identity may do on the broker.</summary>
public enum IdentityRole
{
    /// <summary>A device: publishes under its own <c>{id}/</c>, subscribes only within it.</summary>
    Device,

    /// <summary>A server: reads every device's topics, publishes commands to any device.</summary>
    Server,
}
