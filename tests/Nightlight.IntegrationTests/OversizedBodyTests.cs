using System.Globalization;
using System.Net.Sockets;
using System.Text;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>
/// Regression (issue 29): a request body over Kestrel's limit was logged as an unhandled exception with a stack trace.
/// It is bad input from the network: a 413 answer and one line saying what was refused.
/// </summary>
public class OversizedBodyTests
{
    [Fact]
    public async Task A_body_over_the_limit_gets_413_and_one_log_line_not_an_unhandled_exception()
    {
        var http = Ports.Free();
        await using var up = NightlightCli.Start("up", "--mqtt-port", Ports.Free().ToString(CultureInfo.InvariantCulture),
            "--http-port", http.ToString(CultureInfo.InvariantCulture), "--no-device", "--no-status");
        await up.WaitForErrorLineAsync("Server listening", TimeSpan.FromSeconds(60));

        // The attacker's client announces 40 MB (Kestrel takes 30 MB at most) and starts sending.
        using var client = new TcpClient();
        await client.ConnectAsync("127.0.0.1", http);
        var stream = client.GetStream();
        await stream.WriteAsync(Encoding.ASCII.GetBytes(
            $"POST /api/devices/big1/telemetry HTTP/1.1\r\nHost: 127.0.0.1:{http}\r\nContent-Type: application/json\r\nContent-Length: 40000000\r\n\r\n"));
        await stream.WriteAsync(new byte[64 * 1024]);
        var answer = new byte[512];
        var read = await stream.ReadAsync(answer).AsTask().WaitAsync(TimeSpan.FromSeconds(30));
        Assert.StartsWith("HTTP/1.1 413", Encoding.ASCII.GetString(answer, 0, read));

        var line = await up.WaitForErrorLineAsync("Refused POST /api/devices/big1/telemetry", TimeSpan.FromSeconds(20));
        Assert.Contains("413", line, StringComparison.Ordinal);
        Assert.Single(up.StderrLines, l => l.Contains("/api/devices/big1/telemetry", StringComparison.Ordinal));
        Assert.DoesNotContain(up.StderrLines, l => l.Contains("unhandled", StringComparison.OrdinalIgnoreCase) || l.StartsWith("   at ", StringComparison.Ordinal));
    }
}
