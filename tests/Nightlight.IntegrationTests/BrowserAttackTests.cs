using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>
/// What a web page in the user's browser could do to a loopback-bound Nightlight (issue 29): a plain HTML form
/// posting to <c>/actuator_value</c>, and DNS rebinding (a foreign Host name resolving to 127.0.0.1). Sent with a raw
/// HttpClient carrying exactly the headers a browser would.
/// </summary>
public class BrowserAttackTests
{
    static async Task<bool> LedAsync(HttpClient http)
    {
        var board = await http.GetFromJsonAsync<JsonElement>("api/hardware");
        return board.GetProperty("actuators").EnumerateArray().First(a => a.GetProperty("port").GetInt32() == 5).GetProperty("on").GetBoolean();
    }

    [Fact]
    public async Task A_cross_site_form_or_a_rebound_host_name_cannot_switch_the_led()
    {
        var (broker, _, httpPort) = await NightlightCli.StartBrokerAsync();
        await using var _ = broker;
        using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{httpPort}/") };
        Assert.False(await LedAsync(http));

        // <form method=post action="http://127.0.0.1:5000/actuator_value?port=5"><input name='{"value": true, "x' value='"}'>
        using var form = await http.PostAsync("actuator_value?port=5", new StringContent("{\"value\": true, \"x=\"}", Encoding.UTF8, "text/plain"));
        Assert.Equal(HttpStatusCode.BadRequest, form.StatusCode);
        using var urlEncoded = await http.PostAsync("actuator_value?port=5", new FormUrlEncodedContent([new("{\"value\": true, \"x", "\"}")]));
        Assert.Equal(HttpStatusCode.BadRequest, urlEncoded.StatusCode);
        Assert.False(await LedAsync(http));

        // The same JSON from a page on another site (Origin), or through a rebound name (Host): refused before any endpoint.
        foreach (var (header, value) in new[] { ("Origin", "http://evil.example"), ("Host", $"evil.example:{httpPort}") })
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, "actuator_value?port=5")
            {
                Content = new StringContent("{\"value\": true}", Encoding.UTF8, "application/json"),
            };
            if (header == "Host")
            {
                request.Headers.Host = value;
            }
            else
            {
                request.Headers.Add(header, value);
            }
            using var response = await http.SendAsync(request);
            Assert.True(response.StatusCode == HttpStatusCode.MisdirectedRequest, $"{header}: {value} got {(int)response.StatusCode}");
        }
        Assert.False(await LedAsync(http));

        // The lesson's CounterFit client (JSON, Host 127.0.0.1) still works.
        using var json = await http.PostAsync("actuator_value?port=5", new StringContent("{\"value\": true}", Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.OK, json.StatusCode);
        Assert.True(await LedAsync(http));
        Assert.Contains("does not name this server", broker.Stderr);
    }
}
