using System.Net;
using System.Net.Http.Headers;
using System.Text;
using Microsoft.Extensions.Logging;
using Nightlight.Hardware;
using Nightlight.Mqtt;
using Nightlight.Protocol;

namespace Nightlight.Device;

/// <summary>
/// The virtual nightlight over HTTP (<c>nightlight device --transport http</c>), for the lesson's MQTT-versus-HTTP
/// assignment: each interval it posts <c>{"light": N}</c> to <c>/api/devices/{id}/telemetry</c>, and one long-poll
/// after another on <c>/api/devices/{id}/commands/next</c> brings the server's <c>{"led_on": ...}</c> to the LED.
/// Ordered commands are acknowledged on <c>/api/devices/{id}/acks</c>. Credentials, when given, go as Basic
/// <c>id:secret</c>. One keep-alive connection pool for both loops; does not own the sensor or LED.
/// </summary>
/// <param name="server">The server's HTTP address: <c>http://HOST:PORT</c> of <c>nightlight up</c> (5000) or <c>server</c> (5001).</param>
/// <param name="id">The device id, as in the API's paths.</param>
/// <param name="username">User name for Basic authentication; null with a <paramref name="password"/> uses <paramref name="id"/>.</param>
/// <param name="password">The device's secret; null with no <paramref name="username"/> sends no credentials.</param>
/// <param name="interval">Time between readings.</param>
/// <param name="sensor">Read before each reading is posted: 0–1023 raw ADC counts.</param>
/// <param name="led">Switched by each command that carries <c>led_on</c>.</param>
/// <param name="logger">Receives one line per refused request or lost connection.</param>
/// <param name="say">Receives the lesson's lines: the reading sent, the command received.</param>
/// <param name="sequence">With <paramref name="outbox"/>: numbers each reading (<c>seq</c>, <c>epoch</c>). Not owned.</param>
/// <param name="outbox">
/// Null posts each reading once, the lesson's way. Given, every reading is kept in it and posted with
/// <c>?wait=stored</c> until the server answers that its store has it (the offline policy <c>all</c>). Not owned.
/// </param>
public sealed class HttpNightlight(Uri server, string id, string? username, string? password, TimeSpan interval,
    ILightSensor sensor, ILed led, ILogger logger, Action<string> say, SequenceCounter? sequence = null, Outbox? outbox = null) : IDisposable
{
    static readonly TimeSpan PollWait = TimeSpan.FromSeconds(30);
    static readonly TimeSpan RetryAfter = TimeSpan.FromSeconds(2);

    /// <summary>Kept readings posted at once: the store commits in batches, so one at a time would replay a backlog slowly.</summary>
    const int Window = 16;

    enum Posted { Stored, Refused, Retry }

    readonly SemaphoreSlim _kept = new(0);
    bool _failing;

    readonly HttpClient _http = Create(server, username ?? (password is null ? null : id), password);
    readonly string _path = $"api/devices/{Uri.EscapeDataString(id)}/";

    static HttpClient Create(Uri server, string? username, string? password)
    {
        // Over https:// the server's certificate is checked against the system's store without downloading what it names.
        var http = new HttpClient(new ClientTlsSettings().CreateHttpHandler()) { BaseAddress = server, Timeout = PollWait + TimeSpan.FromSeconds(15) };
        if (username is not null)
        {
            http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Basic",
                Convert.ToBase64String(Encoding.UTF8.GetBytes($"{username}:{password}")));
        }
        return http;
    }

    /// <summary>Posts readings and polls for commands until <paramref name="stopping"/> is cancelled; network failures are logged and retried.</summary>
    public async Task RunAsync(CancellationToken stopping)
    {
        var commands = Task.Run(() => PollCommandsAsync(stopping), CancellationToken.None);
        using var keptStopping = new CancellationTokenSource();
        var kept = outbox is null ? Task.CompletedTask : Task.Run(() => SendKeptAsync(outbox, keptStopping.Token), CancellationToken.None);
        await DeviceClient.RunPeriodicallyAsync(interval, outbox is null ? SendReadingAsync : KeepReadingAsync, stopping).ConfigureAwait(false);
        if (outbox is not null)
        {
            // A clean stop gives the kept readings a moment to be stored; what is left stays on disk for the next start.
            var deadline = Environment.TickCount64 + (long)StopDrain.TotalMilliseconds;
            while (outbox.Count > 0 && Environment.TickCount64 < deadline)
            {
                await Task.Delay(50, CancellationToken.None).ConfigureAwait(false);
            }
            if (outbox.Count > 0)
            {
                logger.LogWarning("Device {DeviceId} stops with {Count} readings not yet stored; they stay in its outbox and are sent at its next start", id, outbox.Count);
            }
            await keptStopping.CancelAsync().ConfigureAwait(false);
        }
        await commands.ConfigureAwait(false);
        await kept.ConfigureAwait(false);
    }

    /// <summary>How long a clean stop waits for kept readings to be stored.</summary>
    public static readonly TimeSpan StopDrain = TimeSpan.FromSeconds(5);

    async ValueTask KeepReadingAsync(CancellationToken stopping)
    {
        var light = await sensor.ReadAsync(stopping).ConfigureAwait(false);
        var seq = sequence!.Next();
        outbox!.Append(TelemetryWriter.Write("light", light, seq, DateTimeOffset.UtcNow, sequence.Epoch));
        say($"Sending telemetry {{\"light\": {Wire.FormatNumber(light)}}}");
        _kept.Release();
    }

    /// <summary>Posts the outbox's readings, oldest first, and removes each once the server says it is stored.</summary>
    async Task SendKeptAsync(Outbox kept, CancellationToken stopping)
    {
        try
        {
            while (!stopping.IsCancellationRequested)
            {
                var batch = kept.Peek(Window);
                if (batch.Count == 0)
                {
                    await _kept.WaitAsync(stopping).ConfigureAwait(false);
                    continue;
                }
                var answers = await Task.WhenAll(batch.Payloads.Select(p => PostKeptAsync(p, stopping))).ConfigureAwait(false);
                // Only the front leaves: a reading stays until every one before it is stored, so none is skipped.
                var done = answers.TakeWhile(a => a != Posted.Retry).Count();
                kept.Commit(batch, done);
                if (done < batch.Count)
                {
                    await Task.Delay(RetryAfter, stopping).ConfigureAwait(false);
                }
            }
        }
        catch (OperationCanceledException) when (stopping.IsCancellationRequested)
        {
        }
    }

    async Task<Posted> PostKeptAsync(byte[] payload, CancellationToken stopping)
    {
        try
        {
            using var content = new ByteArrayContent(payload);
            content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
            using var response = await _http.PostAsync(_path + "telemetry?wait=stored", content, stopping).ConfigureAwait(false);
            var body = await response.Content.ReadAsByteArrayAsync(stopping).ConfigureAwait(false);
            if (response.StatusCode == HttpStatusCode.OK && StoredAck.TryParse(body, out _, out _))
            {
                Recovered();
                return Posted.Stored;
            }
            if (response.StatusCode == HttpStatusCode.BadRequest)
            {
                // The server will never take this one: keeping it would hold back every reading after it.
                logger.LogWarning("Server refused a kept reading of {DeviceId} for good, dropping it: {Problem}", id,
                    TelemetryParser.Printable(Encoding.UTF8.GetString(body), 300));
                return Posted.Refused;
            }
            Failed($"{(int)response.StatusCode} {TelemetryParser.Printable(Encoding.UTF8.GetString(body), 300)}");
            return Posted.Retry;
        }
        catch (Exception e) when (e is HttpRequestException or TaskCanceledException or IOException && !stopping.IsCancellationRequested)
        {
            Failed(Describe(e));
            return Posted.Retry;
        }
    }

    // HttpClient says only "could not establish the SSL connection" outside; the refused certificate's reason is inside.
    static string Describe(Exception e) =>
        e.InnerException is System.Security.Authentication.AuthenticationException refused ? $"cannot verify the TLS certificate of the server: {refused.Message}" : e.Message;

    void Failed(string why)
    {
        if (!_failing)
        {
            _failing = true;
            logger.LogWarning("Device {DeviceId}: readings not stored yet ({Why}); keeping {Count} in the outbox and sending them again", id, why, outbox!.Count);
        }
    }

    void Recovered()
    {
        if (_failing)
        {
            _failing = false;
            logger.LogInformation("Device {DeviceId}: the server stores readings again; {Count} still to send", id, outbox!.Count);
        }
    }

    async ValueTask SendReadingAsync(CancellationToken stopping)
    {
        try
        {
            var light = await sensor.ReadAsync(stopping).ConfigureAwait(false);
            using var content = new ByteArrayContent(TelemetryWriter.Write(light));
            content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
            // Said before the request leaves, so the server's answer is printed after it.
            say($"Sending telemetry {{\"light\": {Wire.FormatNumber(light)}}}");
            using var response = await _http.PostAsync(_path + "telemetry", content, stopping).ConfigureAwait(false);
            if (!response.IsSuccessStatusCode)
            {
                logger.LogWarning("Server refused the reading of {DeviceId}: {Status} {Problem}", id, (int)response.StatusCode,
                    TelemetryParser.Printable(await response.Content.ReadAsStringAsync(stopping).ConfigureAwait(false), 300));
            }
        }
        catch (Exception e) when (e is HttpRequestException or TaskCanceledException or IOException && !stopping.IsCancellationRequested)
        {
            logger.LogWarning("Device {DeviceId} could not send a reading to {Server}: {Error}", id, server, Describe(e));
        }
    }

    async Task PollCommandsAsync(CancellationToken stopping)
    {
        while (!stopping.IsCancellationRequested)
        {
            try
            {
                using var response = await _http.GetAsync($"{_path}commands/next?wait={PollWait.TotalSeconds:0}s", stopping).ConfigureAwait(false);
                if (response.StatusCode == HttpStatusCode.NoContent)
                {
                    continue;
                }
                var body = await response.Content.ReadAsByteArrayAsync(stopping).ConfigureAwait(false);
                if (!response.IsSuccessStatusCode)
                {
                    logger.LogWarning("Server refused the command poll of {DeviceId}: {Status} {Problem}", id, (int)response.StatusCode,
                        TelemetryParser.Printable(Encoding.UTF8.GetString(body), 300));
                    await Task.Delay(RetryAfter, stopping).ConfigureAwait(false);
                    continue;
                }
                if (!CommandMessage.TryParse(body, out var command, out var error))
                {
                    logger.LogWarning("Device {DeviceId} ignored a bad command: {Problem}", id, error);
                    continue;
                }
                say($"Message received: {SensorDevice.LessonText(command)}");
                if (command.LedOn is { } on)
                {
                    await led.SetAsync(on, stopping).ConfigureAwait(false);
                }
                if (command is { Ordered: true, Id: { } commandId, Seq: { } seq })
                {
                    using var ack = new ByteArrayContent(new CommandAck(commandId, seq).ToPayload());
                    ack.Headers.ContentType = new MediaTypeHeaderValue("application/json");
                    using var acked = await _http.PostAsync(_path + "acks", ack, stopping).ConfigureAwait(false);
                }
            }
            catch (OperationCanceledException) when (stopping.IsCancellationRequested)
            {
                return;
            }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException or IOException)
            {
                logger.LogWarning("Device {DeviceId} could not fetch commands from {Server}: {Error}", id, server, Describe(e));
                try
                {
                    await Task.Delay(RetryAfter, stopping).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    return;
                }
            }
        }
    }

    /// <summary>Closes the HTTP connections.</summary>
    public void Dispose()
    {
        _http.Dispose();
        _kept.Dispose();
    }
}
