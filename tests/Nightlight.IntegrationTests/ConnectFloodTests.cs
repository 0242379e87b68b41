using System.Net;
using System.Net.Sockets;
using MQTTnet.Formatter;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>Broker:MaxConnectRate: a connect flood from one address is cut off; other addresses are served as before.</summary>
public class ConnectFloodTests
{
    /// <summary>Opens a TCP connection from <paramref name="from"/> and reports whether the broker closed it within <paramref name="wait"/> without a byte sent.</summary>
    static async Task<bool> ClosedByBrokerAsync(IPAddress address, int port, TimeSpan wait)
    {
        using var tcp = new TcpClient(address.AddressFamily);
        try
        {
            await tcp.ConnectAsync(address, port);
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionReset)
        {
            // Closed so early that the reset overtook the end of the handshake: closed unread all the same.
            return true;
        }
        using var timeout = new CancellationTokenSource(wait);
        try
        {
            return await tcp.GetStream().ReadAsync(new byte[1], timeout.Token) == 0;
        }
        catch (OperationCanceledException)
        {
            return false;
        }
        catch (IOException)
        {
            return true;
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionReset)
        {
            return true;
        }
    }

    [Trait("Speed", "Slow")]
    [Fact]
    public async Task A_connect_flood_from_one_address_is_closed_before_connect_while_a_device_on_another_keeps_working()
    {
        // Loopback is exempt by default (fleets and benchmarks); this broker limits it so 127.0.0.1 can play the flooder.
        var (broker, port, httpPort) = await NightlightCli.StartBrokerWithAsync(
            new Dictionary<string, string> { ["NIGHTLIGHT_Broker__LimitLoopbackConnections"] = "true" }, "--max-connect-rate", "5");
        await using (broker)
        {
            // 200 connections from 127.0.0.1 at once: about one second's worth (5) get through, the rest are closed unread.
            var flooding = Task.WhenAll(Enumerable.Range(0, 200).Select(_ => Task.Run(() => ClosedByBrokerAsync(IPAddress.Loopback, port, TimeSpan.FromSeconds(5)))));

            // Meanwhile a device on ::1 connects and does a round trip.
            await using (var device = await MqttProbe.ConnectAsync(port, MqttProtocolVersion.V500, "porch", "::1"))
            {
                await device.SubscribeAsync("porch/commands");
                await device.PublishAsync("porch/commands", "{\"led_on\": true}");
                await device.WaitForAsync(m => m.Topic == "porch/commands");
            }
            var closed = (await flooding).Count(c => c);
            Assert.True(closed >= 150, $"only {closed} of 200 flooding connections were closed");

            // One log line for the burst, however many connections it refused; the counter has them all.
            await broker.WaitForErrorLineAsync("Closing new connections from 127.0.0.1");
            var lines = broker.StderrLines.Count(l => l.Contains("Closing new connections from", StringComparison.Ordinal));
            Assert.True(lines <= 3, $"{lines} log lines for one flood");
            Assert.DoesNotContain(broker.StderrLines, l => l.Contains("Closing new connections from ::1", StringComparison.Ordinal));
            using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{httpPort}") };
            var metrics = await http.GetStringAsync("/metrics");
            var counter = metrics.Split('\n').FirstOrDefault(l => l.StartsWith("nightlight_broker_refused", StringComparison.Ordinal) && l.Contains("what=\"connect-rate\"", StringComparison.Ordinal));
            Assert.True(counter is not null, "no connect-rate counter in /metrics:\n" + metrics);
            Assert.True(double.Parse(counter.Split(' ')[^1], System.Globalization.CultureInfo.InvariantCulture) >= closed, counter);
        }
    }
}
