using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>src/Nightlight/appsettings.example.json, as the build puts it beside Nightlight.dll, runs <c>nightlight up</c> unchanged.</summary>
public class ExampleConfigurationTests
{
    static string Example => Path.Combine(AppContext.BaseDirectory, "appsettings.example.json");

    [Fact]
    public async Task The_example_file_loads_unchanged_as_nightlight_json()
    {
        using var dir = new TempDirectory("example");
        File.Copy(Example, Path.Combine(dir.Path, "nightlight.json"));
        // Only the ports change, through environment variables, so the test runs beside others.
        await using var up = ProcessRunner.Start("dotnet", [NightlightCli.Dll, "up", "--light", "100"], new Dictionary<string, string>
        {
            ["NO_COLOR"] = "1",
            ["NIGHTLIGHT_Broker__MqttPort"] = Ports.Free().ToString(),
            ["NIGHTLIGHT_Http__Port"] = Ports.Free().ToString(),
            ["NIGHTLIGHT_Device__Interval"] = "200ms",
        }, dir.Path);
        await up.WaitForLineAsync("LED switched ON");
    }
}
