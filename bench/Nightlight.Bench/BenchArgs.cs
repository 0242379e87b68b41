using System.Net;
using System.Net.Sockets;

namespace Nightlight.Bench;

/// <summary>What every benchmark subcommand needs: its options, and free loopback ports for what it starts.</summary>
static class BenchArgs
{
    /// <summary>The value after <paramref name="name"/>, or null when the option is absent.</summary>
    public static string? Option(string[] args, string name)
    {
        var index = Array.IndexOf(args, name);
        return index >= 0 && index + 1 < args.Length ? args[index + 1] : null;
    }

    /// <summary>A loopback TCP port nobody listens on right now.</summary>
    public static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}
