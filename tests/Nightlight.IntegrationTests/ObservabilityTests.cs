using System.Net;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

public class ObservabilityTests
{
    [Fact]
    public async Task Up_reports_health_readiness_and_prometheus_metrics()
    {
        var http = Ports.Free();
        await using var up = NightlightCli.Start("up", "--mqtt-port", Ports.Free().ToString(), "--http-port", http.ToString(),
            "--light", "100", "--interval", "200ms");
        await up.WaitForLineAsync("LED switched ON");
        using var client = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{http}") };

        Assert.Equal(HttpStatusCode.OK, (await client.GetAsync("/healthz")).StatusCode);
        var ready = await client.GetAsync("/readyz");
        Assert.Equal(HttpStatusCode.OK, ready.StatusCode);
        Assert.Equal("Healthy", await ready.Content.ReadAsStringAsync());

        var metrics = await client.GetStringAsync("/metrics");
        var received = metrics.Split('\n').FirstOrDefault(l => l.StartsWith("nightlight_telemetry_received", StringComparison.Ordinal));
        Assert.NotNull(received);
        Assert.True(double.Parse(received.Split(' ')[^1], System.Globalization.CultureInfo.InvariantCulture) >= 1, received);
        Assert.Contains("nightlight_commands_sent", metrics);
        Assert.Contains("nightlight_broker_clients", metrics);
    }
}
