using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>
/// The CounterFit-compatible API at the root paths, driven the way the lesson's Python packages drive CounterFit
/// (counterfit-connection and counterfit-shims-grove), and the C# device's <c>--hardware</c> flag.
/// </summary>
public class CounterFitApiTests
{
    static string Peer(string name) => Path.Combine(AppContext.BaseDirectory, "Peers", name);

    static async Task<JsonElement> HardwareAsync(HttpClient http) =>
        JsonDocument.Parse(await http.GetStringAsync("api/hardware")).RootElement;

    static async Task<bool?> LedAsync(HttpClient http)
    {
        var board = await HardwareAsync(http);
        foreach (var actuator in board.GetProperty("actuators").EnumerateArray())
        {
            if (actuator.GetProperty("port").GetInt32() == 5)
            {
                return actuator.GetProperty("on").GetBoolean();
            }
        }
        return null;
    }

    static async Task WaitForLedAsync(HttpClient http, bool on, ProcessRunner? describe = null)
    {
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (await LedAsync(http) != on)
        {
            Assert.True(DateTime.UtcNow < deadline, $"the LED on port 5 never went {(on ? "on" : "off")}\n{describe?.Describe()}");
            await Task.Delay(100);
        }
    }

    [Fact]
    public async Task The_counterfit_connection_calls_get_what_counterfit_answers()
    {
        var (broker, _, httpPort) = await NightlightCli.StartBrokerAsync();
        await using var _ = broker;
        using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{httpPort}/") };

        // CounterFitConnection.init: a POST without a body; CounterFit answers 200 "OK".
        using var connect = await http.PostAsync("connect", null);
        Assert.Equal(HttpStatusCode.OK, connect.StatusCode);
        Assert.Equal("OK", await connect.Content.ReadAsStringAsync());

        // Holding the light at 412 from the hardware page; get_sensor_int_value(0) reads {"value": 412}.
        using var set = await http.PutAsJsonAsync("api/hardware/sensors/0", new { mode = "Fixed", value = 412 });
        Assert.Equal(HttpStatusCode.OK, set.StatusCode);
        var sensor = JsonDocument.Parse(await http.GetStringAsync("sensor_value?port=0")).RootElement;
        Assert.Equal(412, sensor.GetProperty("value").GetInt32());

        // A port with no sensor: 404, as CounterFit answers.
        using var missing = await http.GetAsync("sensor_value?port=7");
        Assert.Equal(HttpStatusCode.NotFound, missing.StatusCode);
        Assert.Equal("Sensor with port 7 not found", await missing.Content.ReadAsStringAsync());

        // set_actuator_boolean_value(5, True): JSON {"value": true}; the LED on port 5 lights up, then goes dark again.
        using var on = await http.PostAsync("actuator_value?port=5", new StringContent("{\"value\": true}", Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.OK, on.StatusCode);
        Assert.True(await LedAsync(http));
        using var off = await http.PostAsync("actuator_value?port=5", new StringContent("{\"value\": false}", Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.OK, off.StatusCode);
        Assert.False(await LedAsync(http));

        // set_actuator_float_value sends a number: non-zero is on.
        using var number = await http.PostAsync("actuator_value?port=5", new StringContent("{\"value\": 1.0}", Encoding.UTF8, "application/json"));
        Assert.True(await LedAsync(http));

        // A button reads as a boolean, a temperature as a float.
        await http.PutAsJsonAsync("api/hardware/sensors/2", new { kind = "Button", value = 1 });
        await http.PutAsJsonAsync("api/hardware/sensors/3", new { kind = "Temperature", value = 18.5 });
        Assert.True(JsonDocument.Parse(await http.GetStringAsync("sensor_value?port=2")).RootElement.GetProperty("value").GetBoolean());
        Assert.Equal(18.5, JsonDocument.Parse(await http.GetStringAsync("sensor_value?port=3")).RootElement.GetProperty("value").GetDouble());

        // Bad input from the network is answered, logged in one line, and changes nothing.
        using var bad = await http.PostAsync("actuator_value?port=5", new StringContent("not json", Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.BadRequest, bad.StatusCode);
        Assert.True(await LedAsync(http));
    }

    [Fact]
    public async Task Sensors_follow_random_and_csv_replay_settings()
    {
        var (broker, _, httpPort) = await NightlightCli.StartBrokerAsync();
        await using var _ = broker;
        using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{httpPort}/") };
        async Task<int> ReadAsync(int port) =>
            JsonDocument.Parse(await http.GetStringAsync($"sensor_value?port={port}")).RootElement.GetProperty("value").GetInt32();

        await http.PutAsJsonAsync("api/hardware/sensors/1", new { kind = "SoilMoisture", mode = "Random", minimum = 400, maximum = 420 });
        var random = new HashSet<int>();
        for (var i = 0; i < 50; i++)
        {
            random.Add(await ReadAsync(1));
        }
        Assert.All(random, v => Assert.InRange(v, 400, 420));
        Assert.True(random.Count > 1, "a random sensor read the same value 50 times");

        // A CSV file as a spreadsheet exports it: a header, then time and value; the last number on a line is the value.
        using var csv = new StringContent("time,light\n00:00,100\n00:01,900\n", Encoding.UTF8, "text/csv");
        await http.PutAsJsonAsync("api/hardware/sensors/0", new { replayStepSeconds = 0.3 });
        using var replay = await http.PostAsync("api/hardware/sensors/0/replay", csv);
        Assert.Equal(HttpStatusCode.OK, replay.StatusCode);
        Assert.Equal(2, JsonDocument.Parse(await replay.Content.ReadAsStringAsync()).RootElement.GetProperty("replayCount").GetInt32());
        var seen = new HashSet<int>();
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (!(seen.Contains(100) && seen.Contains(900)))
        {
            Assert.True(DateTime.UtcNow < deadline, $"replay never gave both 100 and 900, saw {string.Join(", ", seen)}");
            seen.Add(await ReadAsync(0));
            await Task.Delay(50);
        }
        Assert.Equal([100, 900], seen.Order());

        using var empty = await http.PostAsync("api/hardware/sensors/0/replay", new StringContent("no numbers here", Encoding.UTF8, "text/csv"));
        Assert.Equal(HttpStatusCode.BadRequest, empty.StatusCode);
    }

    [Fact]
    public async Task The_lessons_python_device_runs_unchanged_against_nightlight_hardware()
    {
        var python = External.RequirePahoPython();
        if (ProcessRunner.Run(python, ["-c", "import requests"], TimeSpan.FromSeconds(20)).ExitCode != 0)
        {
            const string message = "/usr/bin/python3 has no requests module (Debian package python3-requests)";
            if (External.Required)
            {
                Assert.Fail(message);
            }
            Assert.Skip(message);
        }
        var (broker, mqttPort, httpPort) = await NightlightCli.StartBrokerAsync();
        await using var _ = broker;
        await using var server = NightlightCli.Start("server", "--broker", $"mqtt://127.0.0.1:{mqttPort}");
        await server.WaitForErrorLineAsync("Server listening");
        using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{httpPort}/") };
        await http.PutAsJsonAsync("api/hardware/sensors/0", new { mode = "Fixed", value = 800 });

        await using var device = ProcessRunner.Start(python,
            [Peer("lesson_counterfit_device.py"), "pycf", "127.0.0.1", mqttPort.ToString(), "127.0.0.1", httpPort.ToString(), "60"]);
        await device.WaitForLineAsync("Sending telemetry  {\"light\": 800}");
        await device.WaitForLineAsync("Message received: {\"led_on\": false}");
        Assert.False(await LedAsync(http));

        // The learner drags the slider to dark: the Python device reads it, the server answers, the LED lights.
        await http.PutAsJsonAsync("api/hardware/sensors/0", new { mode = "Fixed", value = 90 });
        await device.WaitForLineAsync("Sending telemetry  {\"light\": 90}");
        await device.WaitForLineAsync("Message received: {\"led_on\": true}");
        await WaitForLedAsync(http, true, device);
        Assert.NotEqual(JsonValueKind.Null, (await HardwareAsync(http)).GetProperty("lastContact").ValueKind);
    }

    [Fact]
    public async Task Device_with_hardware_flag_reads_and_switches_a_counterfit_endpoint()
    {
        var (broker, mqttPort, httpPort) = await NightlightCli.StartBrokerAsync();
        await using var _ = broker;
        await using var server = NightlightCli.Start("server", "--broker", $"mqtt://127.0.0.1:{mqttPort}");
        await server.WaitForErrorLineAsync("Server listening");
        using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{httpPort}/") };
        await http.PutAsJsonAsync("api/hardware/sensors/0", new { mode = "Fixed", value = 150 });

        await using var device = NightlightCli.Start("device", "--broker", $"mqtt://127.0.0.1:{mqttPort}", "--id", "remote1",
            "--interval", "200ms", "--hardware", $"http://127.0.0.1:{httpPort}");
        await device.WaitForLineAsync("Sending telemetry {\"light\": 150}");
        await device.WaitForLineAsync("LED switched ON");
        await WaitForLedAsync(http, true, device);

        await http.PutAsJsonAsync("api/hardware/sensors/0", new { mode = "Fixed", value = 640 });
        await device.WaitForLineAsync("Sending telemetry {\"light\": 640}");
        await WaitForLedAsync(http, false, device);
    }

    [Fact]
    public async Task Device_with_unreachable_hardware_keeps_running_and_says_why()
    {
        var (broker, mqttPort, _) = await NightlightCli.StartBrokerAsync();
        await using var _ = broker;
        await using var device = NightlightCli.Start("device", "--broker", $"mqtt://127.0.0.1:{mqttPort}", "--id", "remote2",
            "--interval", "200ms", "--hardware", $"http://127.0.0.1:{Ports.Free()}");
        // Two warnings, not one: the device went on to the next reading after the first failed.
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (device.StderrLines.Count(line => line.Contains("could not read its light sensor", StringComparison.Ordinal)) < 2)
        {
            Assert.True(DateTime.UtcNow < deadline, "no repeated warning about the unreachable light sensor\n" + device.Describe());
            await Task.Delay(100);
        }
        Assert.False(device.HasExited, device.Describe());
        Assert.DoesNotContain("   at ", device.Stderr);
    }
}
