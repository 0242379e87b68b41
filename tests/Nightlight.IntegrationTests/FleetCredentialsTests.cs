using System.Text.RegularExpressions;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary><c>nightlight fleet</c> against a broker that requires authentication, over TLS, with credentials from <c>devices add --count --save</c>.</summary>
[System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
public partial class FleetCredentialsTests
{
    [Trait("Speed", "Slow")]
    [Fact]
    public async Task A_fleet_with_a_credentials_file_is_answered_by_an_authenticating_broker_over_tls()
    {
        using var data = new DataDir();
        var credentials = Path.Combine(data.Path, "fleet-credentials.txt");
        var (code, stdout, stderr) = data.Devices("add", "fl", "--count", "3", "--save", credentials);
        Assert.True(code == 0, stdout + stderr);
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(credentials));
        var lines = File.ReadAllLines(credentials);
        Assert.Equal(["fl00001", "fl00002", "fl00003"], lines.Select(l => l.Split(' ')[0]));
        Assert.DoesNotContain(lines[0].Split(' ')[1], stdout);
        var serverSecret = data.Add("backend", "add-server");

        var tlsPort = Ports.Free();
        var (broker, port, _) = await NightlightCli.StartBrokerAsync("--data", data.Path, "--tls-port", tlsPort.ToString());
        await using (broker)
        {
            var server = NightlightCli.Start("server", "--broker", $"mqtt://127.0.0.1:{port}", "--username", "backend", "--password", serverSecret, "--quiet");
            await using (server)
            {
                await server.WaitForLineAsync("Server ", TimeSpan.FromSeconds(30));

                // Without credentials the same fleet is turned away.
                await using (var anonymous = NightlightCli.Start("fleet", "--broker", $"mqtt://127.0.0.1:{port}", "--devices", "1", "--id-prefix", "fl", "--duration", "3s"))
                {
                    Assert.True(await anonymous.WaitForExitAsync(TimeSpan.FromSeconds(60)), anonymous.Describe());
                    Assert.Matches(@"done: 1 devices, \d+ readings sent, 0 answered", anonymous.Stdout);
                }

                await using var fleet = NightlightCli.Start("fleet", "--broker", $"mqtts://localhost:{tlsPort}", "--cafile", Path.Combine(data.Path, "dev-broker.pem"),
                    "--credentials", credentials, "--devices", "3", "--interval", "300ms", "--duration", "15s");
                Assert.True(await fleet.WaitForExitAsync(TimeSpan.FromSeconds(60)), fleet.Describe());
                var done = Done().Match(fleet.Stdout);
                Assert.True(done.Success, fleet.Describe());
                Assert.True(long.Parse(done.Groups[1].Value) > 0, done.Value);
                foreach (var line in lines)
                {
                    Assert.DoesNotContain(line.Split(' ')[1], broker.Stdout + broker.Stderr + fleet.Stdout + fleet.Stderr);
                }
            }

            // bench with the same devices, measuring our server under the server identity (it starts its own server).
            var json = Path.Combine(data.Path, "bench.json");
            await using var bench = NightlightCli.Start("bench", "--broker", $"mqtt://127.0.0.1:{port}", "--credentials", credentials, "--devices", "3",
                "--rate", "30", "--duration", "2s", "--warmup", "1s", "--servers", "ours", "--server-username", "backend", "--server-password", serverSecret, "--json", json);
            Assert.True(await bench.WaitForExitAsync(TimeSpan.FromMinutes(2)), bench.Describe());
            Assert.True(bench.ExitCode == 0, bench.Describe());
            using var document = System.Text.Json.JsonDocument.Parse(await File.ReadAllTextAsync(json));
            var result = document.RootElement.GetProperty("results").EnumerateArray().Single();
            // Answered at all is the point here (authentication); losslessness under load is BenchSmokeTests' business.
            Assert.True(result.GetProperty("sent").GetInt64() - result.GetProperty("lost").GetInt64() > 20, result.ToString());
            Assert.Equal(0, result.GetProperty("wrong").GetInt64());
        }
    }

    [GeneratedRegex(@"done: 3 devices, \d+ readings sent, (\d+) answered")]
    private static partial Regex Done();
}
