using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using MQTTnet.Formatter;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>
/// The HTTP token (<c>Http:Token</c>, required whenever it is set or HTTP is bound beyond loopback) on the endpoints that
/// change state: manual commands and the virtual hardware. Read-only pages stay open, and no secret shows anywhere.
/// </summary>
public class HttpTokenTests
{
    const string Token = "t0ken-5f2c9e61a7d84b0fa3c2";

    [Fact]
    public async Task State_changing_endpoints_refuse_without_the_token_and_accept_it_and_no_secret_shows_in_logs_or_pages()
    {
        using var data = new DataDir();
        var secret = data.Add("kitchen");
        var mqtt = Ports.Free();
        var http = Ports.Free();
        await using var up = NightlightCli.StartWith(new Dictionary<string, string> { ["NIGHTLIGHT_Http__Token"] = Token },
            "up", "--mqtt-port", mqtt.ToString(), "--http-port", http.ToString(), "--data", data.Path, "--light", "100", "--interval", "300ms");
        await up.WaitForLineAsync("LED switched ON", TimeSpan.FromSeconds(60));
        await up.WaitForLineAsync("changes over HTTP need 'Authorization: Bearer TOKEN' (Http:Token)");

        // A device with an identity publishes, so the dashboard has it too.
        await using (var kitchen = await MqttProbe.ConnectAsAsync(mqtt, "kitchennightlight_client", "kitchen", secret, MqttProtocolVersion.V500))
        {
            await kitchen.PublishAsync("kitchen/telemetry", "{\"light\": 500}");
        }

        using var client = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{http}") };
        var changes = new (string Name, Func<HttpRequestMessage> Request)[]
        {
            ("set a sensor", () => new HttpRequestMessage(HttpMethod.Put, "/api/hardware/sensors/0") { Content = JsonContent.Create(new { value = 640 }) }),
            ("add an actuator", () => new HttpRequestMessage(HttpMethod.Put, "/api/hardware/actuators/9") { Content = JsonContent.Create(new { kind = "Relay" }) }),
            ("replay a CSV", () => new HttpRequestMessage(HttpMethod.Post, "/api/hardware/sensors/0/replay") { Content = new StringContent("10\n20\n", System.Text.Encoding.UTF8, "text/csv") }),
            ("free a port", () => new HttpRequestMessage(HttpMethod.Delete, "/api/hardware/ports/9")),
            ("send a command", () => new HttpRequestMessage(HttpMethod.Post, "/api/devices/nightlight1/commands") { Content = JsonContent.Create(new { led_on = false, overrideFor = "1m" }) }),
        };
        foreach (var (name, request) in changes)
        {
            using var bare = await client.SendAsync(request());
            Assert.True(bare.StatusCode == HttpStatusCode.Unauthorized, $"{name} without a token: {(int)bare.StatusCode}");
            Assert.Equal("Bearer", bare.Headers.WwwAuthenticate.Single().Scheme);
            var wrong = request();
            wrong.Headers.Authorization = new AuthenticationHeaderValue("Bearer", Token + "x");
            using var wrongAnswer = await client.SendAsync(wrong);
            Assert.True(wrongAnswer.StatusCode == HttpStatusCode.Unauthorized, $"{name} with a wrong token: {(int)wrongAnswer.StatusCode}");
            var right = request();
            right.Headers.Authorization = new AuthenticationHeaderValue("Bearer", Token);
            using var accepted = await client.SendAsync(right);
            Assert.True(accepted.IsSuccessStatusCode, $"{name} with the token: {(int)accepted.StatusCode} {await accepted.Content.ReadAsStringAsync()}");
        }
        // The sensor change went through: the board shows it to anyone (reads need no token).
        var board = await client.GetStringAsync("/api/hardware");
        Assert.Contains("\"port\":0", board.Replace(" ", ""));

        // No secret in any page, API answer or log line: not the token, not the device secret.
        var pages = new List<string>();
        foreach (var path in new[] { "/", "/hardware", "/dashboard.js", "/hardware.js", "/api/hardware", "/api/devices", "/api/config", "/metrics" })
        {
            using var response = await client.GetAsync(path);
            pages.Add(path + ": " + await response.Content.ReadAsStringAsync());
        }
        var everything = string.Join('\n', pages) + up.Stdout + up.Stderr;
        Assert.DoesNotContain(Token, everything);
        Assert.DoesNotContain(secret, everything);
        Assert.Contains("/api/devices: ", everything);
    }
}
