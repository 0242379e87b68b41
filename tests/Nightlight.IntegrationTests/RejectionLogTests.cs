using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>A device sending garbage in a loop wrote 3,000 log lines in 4 s (issue 29): the server caps them.</summary>
public class RejectionLogTests
{
    [Fact]
    public async Task A_flood_of_bad_payloads_gets_a_few_lines_and_a_count()
    {
        var (broker, port, _) = await NightlightCli.StartBrokerAsync();
        await using (broker)
        {
            await using var server = NightlightCli.Start("server", "--broker", $"mqtt://127.0.0.1:{port}");
            await server.WaitForErrorLineAsync("Server listening");
            await using var sender = await MqttProbe.ConnectAsync(port);
            for (var i = 0; i < 500; i++)
            {
                await sender.PublishAsync("garbage/telemetry", "not json " + i);
            }
            await Task.Delay(1500);
            await sender.PublishAsync("garbage/telemetry", "not json, the last one");
            await server.WaitForErrorLineAsync("more rejected messages were not logged");
            var lines = server.StderrLines.Count(l => l.Contains("Rejected telemetry from device garbage", StringComparison.Ordinal));
            Assert.InRange(lines, 1, 60);
        }
    }
}
