using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>The lesson's own Python code (paho-mqtt 1.6 from Debian) against our parts.</summary>
public class LessonPeerTests
{
    static string Peer(string name) => Path.Combine(AppContext.BaseDirectory, "Peers", name);

    [Trait("Speed", "Slow")]
    [Fact]
    public async Task The_lesson_python_device_is_answered_by_our_server_on_our_broker()
    {
        var python = External.RequirePahoPython();
        var (broker, port, _) = await NightlightCli.StartBrokerAsync();
        await using (broker)
        {
            await using var server = NightlightCli.Start("server", "--broker", $"mqtt://127.0.0.1:{port}");
            await server.WaitForErrorLineAsync("Server listening");

            await using var device = ProcessRunner.Start(python, [Peer("lesson_device.py"), "py1", "127.0.0.1", port.ToString(), "120", "10"]);
            await device.WaitForLineAsync("Message received: {\"led_on\": true}");
            await server.WaitForLineAsync("Message received: {\"light\": 120}");
            Assert.True(await device.WaitForExitAsync(TimeSpan.FromSeconds(30)), device.Describe());
            Assert.Equal(0, device.ExitCode);
        }
    }

    [Fact]
    public async Task The_lesson_python_server_drives_our_device()
    {
        var python = External.RequirePahoPython();
        var (broker, port, _) = await NightlightCli.StartBrokerAsync();
        await using (broker)
        {
            await using var server = ProcessRunner.Start(python, [Peer("lesson_server.py"), "py2", "127.0.0.1", port.ToString()]);
            await server.WaitForLineAsync("Subscribed");
            await using var device = NightlightCli.Start("device", "--broker", $"mqtt://127.0.0.1:{port}", "--id", "py2", "--light", "90", "--interval", "200ms");
            // The lesson's server echoes the whole payload: seq and ts ride along, and its rule ignores them.
            await server.WaitForLineAsync("Message received: {\"light\": 90, \"seq\": ");
            await device.WaitForLineAsync("Message received: {\"led_on\": true}");
            await device.WaitForLineAsync("LED switched ON");
        }
    }

    [Fact]
    public async Task The_lesson_python_device_works_through_mosquitto_with_our_server()
    {
        var python = External.RequirePahoPython();
        await using var mosquitto = await MosquittoBroker.StartAsync();
        await using var server = NightlightCli.Start("server", "--broker", mosquitto.Url);
        await server.WaitForErrorLineAsync("Server listening");
        await using var device = ProcessRunner.Start(python, [Peer("lesson_device.py"), "py3", "127.0.0.1", mosquitto.Port.ToString(), "700", "10"]);
        await device.WaitForLineAsync("Message received: {\"led_on\": false}");
    }
}
