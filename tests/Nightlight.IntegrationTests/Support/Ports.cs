using System.Net;
using System.Net.Sockets;

namespace Nightlight.Tests.Support;

/// <summary>Free loopback ports for brokers and servers started by a test.</summary>
public static class Ports
{
    // The OS may offer a just-released port again at once (one run asked for a broker's MQTT and HTTP ports and got
    // the same number twice), so no port is handed out twice in one test run.
    static readonly HashSet<int> Given = [];

    public static int Free()
    {
        while (true)
        {
            using var listener = new TcpListener(IPAddress.Loopback, 0);
            listener.Start();
            var port = ((IPEndPoint)listener.LocalEndpoint).Port;
            lock (Given)
            {
                if (Given.Add(port))
                {
                    return port;
                }
            }
        }
    }

    /// <summary>Waits until something accepts TCP connections on 127.0.0.1:<paramref name="port"/>.</summary>
    public static async Task WaitOpenAsync(int port, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            try
            {
                using var client = new TcpClient();
                await client.ConnectAsync(IPAddress.Loopback, port);
                return;
            }
            catch (SocketException) when (DateTime.UtcNow < deadline)
            {
                await Task.Delay(50);
            }
        }
    }
}
