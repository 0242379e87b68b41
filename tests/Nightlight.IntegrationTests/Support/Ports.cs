using System.Globalization;
using System.Net;
using System.Net.Sockets;

namespace Nightlight.Tests.Support;

/// <summary>
/// Free loopback ports for brokers and servers started by a test. A port is handed out free and bound later by the
/// process the test starts, so the starters (<see cref="NightlightCli"/>, <see cref="MosquittoBroker"/>,
/// <see cref="PostgresServer"/>, <see cref="RabbitCluster"/>) start again on new ports when theirs was taken meanwhile.
/// </summary>
public static class Ports
{
    // Ports come from below the OS's ephemeral range: the outgoing connections of this run (thousands, from the fuzz
    // and flood tests) and of other programs on the machine, and every bind to port 0, take ports from that range, so
    // one of them could take a port between the moment it is handed out and the moment the test's process binds it.
    static readonly (int First, int Last) Range = UnusedByTheOs();

    // A UDP socket bound to each port handed out, held until the test process exits: no other test run on this machine
    // (nor this one) hands the same port out, and our processes bind TCP, which the UDP socket leaves free.
    static readonly List<Socket> Held = [];

    public static int Free()
    {
        for (var attempt = 0; attempt < 10_000; attempt++)
        {
            var port = Random.Shared.Next(Range.First, Range.Last + 1);
            if (TryHold(port))
            {
                return port;
            }
        }
        throw new InvalidOperationException($"no free TCP port between {Range.First} and {Range.Last}");
    }

    static bool TryHold(int port)
    {
        var marker = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        try
        {
            marker.Bind(new IPEndPoint(IPAddress.Loopback, port));
            using var listener = new TcpListener(IPAddress.Loopback, port);
            listener.Start();
        }
        catch (SocketException)
        {
            marker.Dispose();
            return false;
        }
        lock (Held)
        {
            Held.Add(marker);
        }
        return true;
    }

    /// <summary>Ports 20000 up to the start of the ephemeral range (Linux: 32768), or above its end if it starts lower.</summary>
    static (int First, int Last) UnusedByTheOs()
    {
        var (low, high) = (32768, 60999);
        if (File.Exists("/proc/sys/net/ipv4/ip_local_port_range"))
        {
            var range = File.ReadAllText("/proc/sys/net/ipv4/ip_local_port_range").Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
            (low, high) = (int.Parse(range[0], CultureInfo.InvariantCulture), int.Parse(range[1], CultureInfo.InvariantCulture));
        }
        return low > 24000 ? (20000, low - 1) : high < 61000 ? (high + 1, 65535) : (1024, 65535);
    }

    /// <summary>
    /// Runs a starter that takes its ports from <see cref="Free"/>, and runs it again (up to three times in all) while
    /// it throws <see cref="PortTakenException"/>: a port was taken between <see cref="Free"/> and its process's bind.
    /// </summary>
    public static async Task<T> RetryWhenTakenAsync<T>(Func<Task<T>> start)
    {
        for (var attempt = 1; ; attempt++)
        {
            try
            {
                return await start();
            }
            catch (PortTakenException) when (attempt < 3)
            {
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

/// <summary>A process stopped because a port it was given from <see cref="Ports.Free"/> was already in use; its starter may start again.</summary>
public sealed class PortTakenException(string message) : Exception(message);
