using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>What a device or a local user could do with the files Nightlight writes (issue 29).</summary>
[System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
public class DataAtRestTests
{
    [Fact]
    public async Task A_server_alone_makes_its_data_directory_and_database_owner_only_under_a_lax_umask()
    {
        using var root = new TempDirectory("private");
        var data = Path.Combine(root.Path, "server-only", "data");
        var (broker, mqtt, _) = await NightlightCli.StartBrokerAsync();
        await using (broker)
        {
            // umask 022 would give 755 and 644: the files must not follow it.
            var command = $"umask 022 && exec dotnet '{NightlightCli.Dll}' server --broker mqtt://127.0.0.1:{mqtt} --http-port {Ports.Free()} --data '{data}'";
            await using var server = ProcessRunner.Start("sh", ["-c", command]);
            await server.WaitForErrorLineAsync("Server listening", TimeSpan.FromSeconds(60));
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute, File.GetUnixFileMode(data));
            foreach (var file in Directory.GetFiles(data, "nightlight.db*"))
            {
                Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(file));
            }
            Assert.True(File.Exists(Path.Combine(data, "nightlight.db")), "the server made no database");
        }
    }

    [Trait("Speed", "Slow")]
    [Fact]
    public async Task Export_escapes_a_formula_a_device_chose_as_measurement_name()
    {
        using var root = new TempDirectory("export");
        var data = Path.Combine(root.Path, "fresh", "data");
        var (broker, mqtt, _) = await NightlightCli.StartBrokerAsync("--data", data);
        await using (broker)
        {
            // The broker made the data directory owner-only, whatever the umask.
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute, File.GetUnixFileMode(data));
            var server = NightlightCli.Start("server", "--broker", $"mqtt://127.0.0.1:{mqtt}", "--http-port", Ports.Free().ToString(), "--data", data);
            await using (server)
            {
                await server.WaitForErrorLineAsync("Server listening", TimeSpan.FromSeconds(60));
                var pub = External.Require("mosquitto_pub", "mosquitto-clients");
                var payload = "{\"light\": 5, \"=HYPERLINK(\\\"http://127.0.0.1/x\\\",\\\"open\\\")\": 1, \"@SUM(1+1)\": 2}";
                var stored = false;
                for (var i = 0; i < 60 && !stored; i++)
                {
                    Assert.Equal(0, ProcessRunner.Run(pub, ["-h", "127.0.0.1", "-p", mqtt.ToString(), "-t", "evil/telemetry", "-m", payload], TimeSpan.FromSeconds(20)).ExitCode);
                    await Task.Delay(500);
                    stored = server.Stderr.Contains("evil", StringComparison.Ordinal) || i > 4;
                }
            }
        }
        var csv = Path.Combine(root.Path, "evil.csv");
        var export = ProcessRunner.Run("dotnet", [NightlightCli.Dll, "export", "--device", "evil", "--data", data, "--out", csv], TimeSpan.FromSeconds(60));
        Assert.True(export.ExitCode == 0, export.Stderr);
        var header = File.ReadAllLines(csv)[0];
        Assert.Equal("device,ts,arrived,seq,light,\"'=HYPERLINK(\"\"http://127.0.0.1/x\"\",\"\"open\"\")\",\"'@SUM(1+1)\"", header);
    }
}
