using System.Text;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>Bad telemetry through the real broker: one log line each, counted, no command, nothing else disturbed.</summary>
public class BadPayloadTests
{
    static readonly (string Name, byte[] Payload, string Reason)[] Cases =
    [
        ("not JSON", "light=412"u8.ToArray(), "payload is not JSON"),
        ("no measurement", "{\"seq\": 3}"u8.ToArray(), "\"light\" is missing, and there is no other measurement"),
        ("string light", "{\"light\": \"412\"}"u8.ToArray(), "\"light\" is a string, not a number"),
        ("negative", "{\"light\": -5}"u8.ToArray(), "\"light\" is negative"),
        ("absurd", "{\"light\": 1e12}"u8.ToArray(), "above the plausible maximum"),
        ("huge", Encoding.UTF8.GetBytes("{\"light\": 1, \"pad\": \"" + new string('x', 100_000) + "\"}"), "over the 8192-byte limit"),
        ("not UTF-8", [0xFF, 0xFE, 0x00], "not valid UTF-8"),
        ("nested", "{\"light\": 1, \"a\": [[[[[[1]]]]]]}"u8.ToArray(), "nested deeper"),
    ];

    [Fact]
    public async Task Every_bad_payload_is_logged_counted_and_unanswered_and_good_ones_still_are()
    {
        var (broker, port, _) = await NightlightCli.StartBrokerAsync();
        await using (broker)
        {
            await using var server = NightlightCli.Start("server", "--broker", $"mqtt://127.0.0.1:{port}");
            await server.WaitForErrorLineAsync("Server listening");
            await using var watcher = await MqttProbe.ConnectAsync(port);
            await watcher.SubscribeAsync("+/commands");
            await using var sender = await MqttProbe.ConnectAsync(port);

            var cases = Cases;
            var i = 0;
            foreach (var (_, payload, _) in cases)
            {
                await sender.PublishAsync($"bad{i++}/telemetry", payload);
            }
            await sender.PublishAsync("good1/telemetry", "{\"light\": 10}");

            // The good reading behind them is answered: nothing bad held it up.
            var good = await watcher.WaitForAsync(m => m.Topic == "good1/commands");
            Assert.Equal("{\"led_on\": true}", good[0].Payload);

            i = 0;
            foreach (var (name, _, reason) in cases)
            {
                var line = await server.WaitForErrorLineAsync($"Rejected telemetry from device bad{i}: ");
                Assert.True(line.Contains(reason, StringComparison.Ordinal), $"{name}: expected '{reason}' in: {line}");
                Assert.Single(server.StderrLines, l => l.Contains($"device bad{i}:", StringComparison.Ordinal));
                i++;
            }
            Assert.DoesNotContain(watcher.Received, m => m.Topic.StartsWith("bad", StringComparison.Ordinal));
            Assert.DoesNotContain(server.StdoutLines, l => l.Contains("bad", StringComparison.Ordinal));
            Assert.False(server.HasExited);
        }
    }
}
