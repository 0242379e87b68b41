using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>Our device and server through Mosquitto, the broker a user moves to when they outgrow ours.</summary>
public class MosquittoInteropTests
{
    [Fact]
    public async Task Device_and_server_work_through_mosquitto()
    {
        await using var mosquitto = await MosquittoBroker.StartAsync();
        await using var server = NightlightCli.Start("server", "--broker", mosquitto.Url, "--id", "mq1");
        await server.WaitForErrorLineAsync("Server listening for mq1/telemetry");
        // MQTT in, SQLite store: the server's socket completions run on the socket thread (Server:InlineSocketCompletions).
        Assert.Contains("socket completions run on the socket thread", await server.WaitForErrorLineAsync("Server link to the broker"));
        await using var device = NightlightCli.Start("device", "--broker", mosquitto.Url, "--id", "mq1", "--light", "150", "--interval", "200ms");

        await server.WaitForLineAsync("Message received: {\"light\": 150}");
        await server.WaitForLineAsync("Sending message: {\"led_on\": true}");
        await device.WaitForLineAsync("LED switched ON");

        await device.TypeAsync("800");
        await device.WaitForLineAsync("LED switched OFF");
    }

    [Fact]
    public async Task Clients_speak_3_1_1_when_asked()
    {
        await using var mosquitto = await MosquittoBroker.StartAsync();
        await using var server = NightlightCli.Start("server", "--broker", mosquitto.Url, "--protocol", "3.1.1");
        await server.WaitForErrorLineAsync("Server listening");
        await using var device = NightlightCli.Start("device", "--broker", mosquitto.Url, "--id", "old1", "--light", "50",
            "--interval", "200ms", "--protocol", "3.1.1");
        await device.WaitForLineAsync("LED switched ON");
    }
}
