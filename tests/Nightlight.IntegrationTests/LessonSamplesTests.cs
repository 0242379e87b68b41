using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>
/// The device and server a learner writes (samples/Lesson, shown whole in docs/lesson.md), in C# and in Python with
/// paho-mqtt 1.6, each run against a real broker and the other side.
/// </summary>
public class LessonSamplesTests
{
    static string Python(string name) => Path.Combine(AppContext.BaseDirectory, "Lesson", name);

    static Dictionary<string, string> Settings(string id, int port) => new()
    {
        ["NIGHTLIGHT_ID"] = id,
        ["NIGHTLIGHT_HOST"] = "127.0.0.1",
        ["NIGHTLIGHT_PORT"] = port.ToString(),
        ["NIGHTLIGHT_BROKER"] = $"mqtt://127.0.0.1:{port}",
        ["PYTHONUNBUFFERED"] = "1",
    };

    [Fact]
    public async Task The_python_device_is_answered_by_up_without_its_own_device()
    {
        var python = External.RequirePahoPython();
        var mqtt = Ports.Free();
        await using var up = NightlightCli.Start("up", "--no-device", "--mqtt-port", mqtt.ToString());
        await up.WaitForLineAsync("Press Ctrl+C to stop.", TimeSpan.FromSeconds(60));
        await using var device = ProcessRunner.Start(python, [Python("device.py")], Settings("pydev", mqtt));

        await device.WaitForLineAsync("MQTT connected!");
        await device.WaitForLineAsync("Message received: {'led_on': True}");
        await device.WaitForLineAsync("LED on");
        Assert.StartsWith("server → pydev ", await up.WaitForLineAsync("| Message received: {\"light\": 100}"));
        // --no-device: the learner's device is the only one.
        Assert.DoesNotContain(up.StdoutLines, l => l.StartsWith("device ", StringComparison.Ordinal));
    }

    [Fact]
    public async Task The_python_server_drives_the_csharp_device()
    {
        var python = External.RequirePahoPython();
        var (broker, port, _) = await NightlightCli.StartBrokerAsync();
        await using (broker)
        {
            await using var server = ProcessRunner.Start(python, [Python("server.py")], Settings("csdev", port));
            await using var device = ProcessRunner.Start("dotnet", [Path.Combine(AppContext.BaseDirectory, "LessonDevice.dll")], Settings("csdev", port));
            await device.WaitForLineAsync("Sending telemetry {\"light\": 100}");
            await server.WaitForLineAsync("Message received: {'light': 100");
            await server.WaitForLineAsync("Sending message: {'led_on': True}");
            await device.WaitForLineAsync("Message received: {\"led_on\": true}");
            await device.WaitForLineAsync("LED on");
        }
    }

    [Fact]
    public async Task The_csharp_server_drives_the_python_device()
    {
        var python = External.RequirePahoPython();
        var (broker, port, _) = await NightlightCli.StartBrokerAsync();
        await using (broker)
        {
            await using var server = ProcessRunner.Start("dotnet", [Path.Combine(AppContext.BaseDirectory, "LessonServer.dll")], Settings("csserver", port));
            await Task.Delay(1000);
            await using var device = ProcessRunner.Start(python, [Python("device.py")], Settings("csserver", port));
            await server.WaitForLineAsync("Message received: {\"light\": 100}");
            await server.WaitForLineAsync("Sending message: {\"led_on\":true}");
            await device.WaitForLineAsync("Message received: {'led_on': True}");
            await device.WaitForLineAsync("LED on");
        }
    }

    [Fact]
    public async Task Code_that_kept_the_lessons_ID_placeholder_gets_a_warning()
    {
        var python = External.RequirePahoPython();
        var mqtt = Ports.Free();
        await using var up = NightlightCli.Start("up", "--no-device", "--mqtt-port", mqtt.ToString());
        await up.WaitForLineAsync("Press Ctrl+C to stop.", TimeSpan.FromSeconds(60));
        var settings = Settings("unused", mqtt);
        settings.Remove("NIGHTLIGHT_ID");
        await using var device = ProcessRunner.Start(python, [Python("device.py")], settings);
        await device.WaitForLineAsync("Sending telemetry");
        var warning = await up.WaitForErrorLineAsync("still has the lesson's placeholder <ID>");
        Assert.Contains("Client <ID>nightlight_client: the client id '<ID>nightlight_client'", warning);
        Assert.Contains("replace <ID> with your device's own id", warning);
        // Once per client, not once per message.
        await device.WaitForCountAsync(l => l.StartsWith("Sending telemetry", StringComparison.Ordinal), 2, "readings", TimeSpan.FromSeconds(20));
        Assert.Single(up.StderrLines, l => l.Contains("placeholder <ID>", StringComparison.Ordinal));
    }
}
