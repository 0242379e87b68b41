using System.Net;
using System.Net.Sockets;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>The lesson, end to end, through the real <c>nightlight</c> command.</summary>
public class LessonEndToEndTests
{
    [Fact]
    public async Task Up_runs_the_whole_lesson_in_one_process_and_stops_on_ctrl_c()
    {
        await using var up = NightlightCli.Start("up", "--mqtt-port", Ports.Free().ToString(), "--http-port", Ports.Free().ToString(),
            "--light", "412", "--interval", "200ms");

        await up.WaitForLineAsync("Sending telemetry {\"light\": 412}");
        await up.WaitForLineAsync("Message received: {\"light\": 412}");
        await up.WaitForLineAsync("Sending message: {\"led_on\": false}");
        await up.WaitForLineAsync("LED switched OFF");

        // The learner covers the sensor: types a dark light level on the terminal.
        await up.TypeAsync("120");
        await up.WaitForLineAsync("Light set to 120");
        await up.WaitForLineAsync("Message received: {\"light\": 120}");
        await up.WaitForLineAsync("Sending message: {\"led_on\": true}");
        await up.WaitForLineAsync("LED switched ON");

        up.Signal("INT");
        Assert.True(await up.WaitForExitAsync(TimeSpan.FromSeconds(15)), "nightlight up did not stop on Ctrl+C\n" + up.Describe());
        Assert.Equal(0, up.ExitCode);
        Assert.DoesNotContain(up.StderrLines, line => line.Contains("lost its connection", StringComparison.Ordinal));
        // The first reading waits for the device's connection to the broker in the same process: none is dropped at start.
        Assert.DoesNotContain(up.StderrLines, line => line.Contains("offline", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Up_answers_on_the_websocket_endpoint_too()
    {
        var http = Ports.Free();
        await using var up = NightlightCli.Start("up", "--mqtt-port", Ports.Free().ToString(), "--http-port", http.ToString(),
            "--light", "100", "--interval", "200ms", "--id", "wsdemo");
        await up.WaitForLineAsync("Sending message: {\"led_on\": true}");

        await using var probe = await MqttProbe.ConnectWebSocketAsync($"ws://127.0.0.1:{http}/mqtt");
        await probe.SubscribeAsync("wsdemo/commands");
        var commands = await probe.WaitForAsync(m => m.Topic == "wsdemo/commands");
        Assert.Equal("{\"led_on\": true}", commands[0].Payload);
    }

    [Fact]
    public async Task A_port_in_use_gives_one_line_naming_the_port_and_the_flag()
    {
        using var squatter = new TcpListener(IPAddress.Loopback, 0);
        squatter.Start();
        var port = ((IPEndPoint)squatter.LocalEndpoint).Port;

        await using var broker = NightlightCli.Start("broker", "--mqtt-port", port.ToString(), "--http-port", Ports.Free().ToString());
        Assert.True(await broker.WaitForExitAsync(TimeSpan.FromSeconds(30)), broker.Describe());
        Assert.Equal(1, broker.ExitCode);
        Assert.Contains($"error: port {port} is already in use; choose another with --mqtt-port", broker.Stderr);
        Assert.DoesNotContain("   at ", broker.Stderr);
    }

    [Fact]
    public async Task Bad_settings_are_named_not_stack_traced()
    {
        await using var device = NightlightCli.Start("device", "--id", "a/b", "--interval", "soon");
        Assert.True(await device.WaitForExitAsync(TimeSpan.FromSeconds(30)), device.Describe());
        Assert.Equal(2, device.ExitCode);
        Assert.Contains("--id 'a/b' is not a valid device id", device.Stderr);
        Assert.Contains("--interval 'soon' is not a duration", device.Stderr);
        Assert.DoesNotContain("   at ", device.Stderr);
    }

    [Theory]
    [InlineData("up")]
    [InlineData("broker")]
    [InlineData("server")]
    [InlineData("device")]
    public async Task Every_command_has_help(string command)
    {
        await using var help = NightlightCli.Start(command, "--help");
        Assert.True(await help.WaitForExitAsync(TimeSpan.FromSeconds(30)), help.Describe());
        Assert.Equal(0, help.ExitCode);
        Assert.Contains("Usage:", help.Stdout);
        Assert.Contains(command == "device" || command == "server" ? "--broker" : "--mqtt-port", help.Stdout);
    }
}
