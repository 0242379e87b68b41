using System.Globalization;
using System.Net.Http.Json;
using System.Security.Cryptography.X509Certificates;
using System.Text.Json;

namespace Nightlight.Hardware;

/// <summary>
/// Hardware reached over CounterFit's HTTP API (CounterFit itself, or Nightlight's <c>/hardware</c>): the same requests
/// the lesson's Python packages make. <c>POST /connect</c>, <c>GET /sensor_value?port=N</c> answering
/// <c>{"value": ...}</c>, <c>POST /actuator_value?port=N</c> with <c>{"value": true}</c>. Owns its HTTP client.
/// </summary>
public sealed class CounterFitHardware : IDisposable
{
    readonly HttpClient _http;

    /// <summary>Creates a client for the CounterFit app at <paramref name="baseAddress"/>, for example <c>http://127.0.0.1:5000</c>.</summary>
    public CounterFitHardware(Uri baseAddress, TimeSpan? timeout = null)
    {
        if (baseAddress.Scheme is not ("http" or "https"))
        {
            throw new ArgumentException($"'{baseAddress}' is not an http:// address.", nameof(baseAddress));
        }
        var root = baseAddress.AbsoluteUri.EndsWith('/') ? baseAddress : new Uri(baseAddress.AbsoluteUri + "/");
        var handler = new SocketsHttpHandler();
        // Over https:// the app's certificate is checked without downloading what it names (issuers, revocation lists).
        handler.SslOptions.CertificateChainPolicy = new X509ChainPolicy { DisableCertificateDownloads = true, RevocationMode = X509RevocationMode.NoCheck };
        _http = new HttpClient(handler) { BaseAddress = root, Timeout = timeout ?? TimeSpan.FromSeconds(5) };
    }

    /// <summary>The CounterFit app's address.</summary>
    public Uri BaseAddress => _http.BaseAddress!;

    /// <summary>Tells the app a device is connected, as <c>CounterFitConnection.init</c> does.</summary>
    public async Task ConnectAsync(CancellationToken cancellationToken)
    {
        using var response = await _http.PostAsync("connect", content: null, cancellationToken).ConfigureAwait(false);
        response.EnsureSuccessStatusCode();
    }

    /// <summary>Reads the sensor on <paramref name="port"/>: a number, or 0/1 for a boolean sensor.</summary>
    /// <exception cref="HttpRequestException">The app is unreachable or has no sensor on that port (404).</exception>
    public async Task<double> ReadSensorAsync(int port, CancellationToken cancellationToken)
    {
        using var response = await _http.GetAsync("sensor_value?port=" + port.ToString(CultureInfo.InvariantCulture), cancellationToken).ConfigureAwait(false);
        response.EnsureSuccessStatusCode();
        // CounterFit answers with JSON text but without a JSON content type, so read the body as it is.
        var body = await response.Content.ReadAsByteArrayAsync(cancellationToken).ConfigureAwait(false);
        using var document = JsonDocument.Parse(body);
        var value = document.RootElement.GetProperty("value");
        return value.ValueKind switch
        {
            JsonValueKind.True => 1,
            JsonValueKind.False => 0,
            JsonValueKind.Number => value.GetDouble(),
            JsonValueKind.String when double.TryParse(value.GetString(), NumberStyles.Float, CultureInfo.InvariantCulture, out var parsed) => parsed,
            _ => throw new HttpRequestException($"sensor on port {port} answered a {value.ValueKind} value"),
        };
    }

    /// <summary>Switches the actuator on <paramref name="port"/>, as <c>set_actuator_boolean_value</c> does.</summary>
    public async Task SetActuatorAsync(int port, bool on, CancellationToken cancellationToken)
    {
        using var response = await _http.PostAsJsonAsync("actuator_value?port=" + port.ToString(CultureInfo.InvariantCulture),
            new { value = on }, cancellationToken).ConfigureAwait(false);
        response.EnsureSuccessStatusCode();
    }

    /// <summary>The light sensor on <paramref name="port"/> of this app.</summary>
    public ILightSensor LightSensor(int port = VirtualBoard.LightPort) => new RemoteLightSensor(this, port);

    /// <summary>The LED on <paramref name="port"/> of this app.</summary>
    public ILed Led(int port = VirtualBoard.LedPort) => new RemoteLed(this, port);

    /// <inheritdoc />
    public void Dispose() => _http.Dispose();

    sealed class RemoteLightSensor(CounterFitHardware hardware, int port) : ILightSensor
    {
        public async ValueTask<double> ReadAsync(CancellationToken cancellationToken) =>
            await hardware.ReadSensorAsync(port, cancellationToken).ConfigureAwait(false);
    }

    sealed class RemoteLed(CounterFitHardware hardware, int port) : ILed
    {
        public async ValueTask SetAsync(bool on, CancellationToken cancellationToken) =>
            await hardware.SetActuatorAsync(port, on, cancellationToken).ConfigureAwait(false);
    }
}
