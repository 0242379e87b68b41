using System.Globalization;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.Logging;
using Nightlight.Hardware;
using Nightlight.Security;

namespace Nightlight.Web;

/// <summary>A sensor as the hardware page shows it.</summary>
public sealed record SensorView(int Port, string Kind, string Mode, double Value, double Current, double Minimum, double Maximum,
    double RangeMinimum, double RangeMaximum, string Unit, int ReplayCount, double ReplayStepSeconds);

/// <summary>An actuator as the hardware page shows it.</summary>
public sealed record ActuatorView(int Port, string Kind, bool On);

/// <summary>The whole board as the hardware page shows it.</summary>
public sealed record BoardView(DateTimeOffset? LastContact, IReadOnlyList<SensorView> Sensors, IReadOnlyList<ActuatorView> Actuators);

/// <summary>A change to a sensor from the hardware page. Absent fields keep their value.</summary>
public sealed record SensorRequest(string? Kind, string? Mode, double? Value, double? Minimum, double? Maximum, double? ReplayStepSeconds);

/// <summary>A new actuator from the hardware page.</summary>
public sealed record ActuatorRequest(string? Kind);

/// <summary>
/// The virtual hardware over HTTP: CounterFit's API at the root paths the lesson's Python packages call, and a JSON
/// API under <c>/api/hardware</c> for the hardware page.
/// </summary>
public static class HardwareEndpoints
{
    /// <summary>Largest CSV file accepted for replay, in bytes.</summary>
    public const int MaxCsvBytes = 1024 * 1024;

    /// <summary>
    /// CounterFit's device API, matched to CounterFit's own app: <c>POST /connect</c> answers <c>OK</c>;
    /// <c>GET /sensor_value?port=N</c> answers <c>{"value": ...}</c> or 404 with a sentence; <c>POST /actuator_value?port=N</c>
    /// with <c>{"value": ...}</c> answers <c>OK</c>, also for a port with nothing on it.
    /// </summary>
    public static IEndpointRouteBuilder MapCounterFitApi(this IEndpointRouteBuilder app)
    {
        app.MapPost("/connect", (VirtualBoard board) =>
        {
            board.Touch();
            return TypedResults.Text("OK");
        }).WithName("CounterFitConnect");
        app.MapPost("/disconnect", () => TypedResults.Text("OK")).WithName("CounterFitDisconnect");
        app.MapGet("/sensor_value", ReadSensor).WithName("CounterFitSensorValue");
        app.MapPost("/actuator_value", SetActuatorAsync).WithName("CounterFitActuatorValue");
        return app;
    }

    static ContentHttpResult ReadSensor(string? port, VirtualBoard board)
    {
        board.Touch();
        if (!int.TryParse(port, NumberStyles.None, CultureInfo.InvariantCulture, out var number) || !board.TryGetSensor(number, out var sensor))
        {
            return TypedResults.Text($"Sensor with port {port} not found", statusCode: StatusCodes.Status404NotFound);
        }
        var value = sensor.Read();
        // Booleans for the button, integers for integer sensors, floats otherwise: what each CounterFit sensor type sends.
        object json = sensor.Kind == SensorKind.Button ? value != 0 : sensor.Range.Integer ? (long)value : value;
        return TypedResults.Content(JsonSerializer.Serialize(new { value = json }), "application/json");
    }

    static async Task<Results<ContentHttpResult, BadRequest<string>>> SetActuatorAsync(string? port, HttpRequest request, VirtualBoard board,
        ILoggerFactory loggers, CancellationToken cancellationToken)
    {
        board.Touch();
        // JSON only, as CounterFit's clients send it: a plain HTML form on any site can POST a form body, never JSON.
        if (!(request.ContentType ?? "").StartsWith("application/json", StringComparison.OrdinalIgnoreCase))
        {
            loggers.CreateLogger(typeof(HardwareEndpoints)).LogWarning("CounterFit actuator_value for port {Port} ignored: the body is not JSON", port);
            return TypedResults.BadRequest("actuator_value takes a JSON body: Content-Type: application/json");
        }
        if (!TryReadActuatorValue(await ReadBodyAsync(request, 64 * 1024, cancellationToken), out var on, out var error))
        {
            loggers.CreateLogger(typeof(HardwareEndpoints)).LogWarning("CounterFit actuator_value for port {Port} ignored: {Problem}", port, error);
            return TypedResults.BadRequest(error);
        }
        if (int.TryParse(port, NumberStyles.None, CultureInfo.InvariantCulture, out var number) && board.TryGetActuator(number, out var actuator))
        {
            actuator.Set(on);
        }
        return TypedResults.Text("OK");
    }

    /// <summary>Reads <c>{"value": true}</c>, <c>{"value": 1.0}</c>: booleans as sent by LEDs and relays, numbers as non-zero = on.</summary>
    static bool TryReadActuatorValue(byte[]? body, out bool on, out string error)
    {
        on = false;
        if (body is null)
        {
            error = "body is over the size limit";
            return false;
        }
        try
        {
            using var document = JsonDocument.Parse(body, new JsonDocumentOptions { MaxDepth = 4 });
            if (document.RootElement.ValueKind != JsonValueKind.Object || !document.RootElement.TryGetProperty("value", out var value))
            {
                error = "body has no \"value\"";
                return false;
            }
            switch (value.ValueKind)
            {
                case JsonValueKind.True or JsonValueKind.False:
                    on = value.GetBoolean();
                    break;
                case JsonValueKind.Number when value.TryGetDouble(out var number):
                    on = number != 0;
                    break;
                default:
                    error = $"\"value\" is a {value.ValueKind.ToString().ToLowerInvariant()}, not true/false or a number";
                    return false;
            }
            error = "";
            return true;
        }
        catch (JsonException e)
        {
            error = $"body is not JSON ({e.Message.Split(". ")[0]})";
            return false;
        }
    }

    /// <summary>The hardware page's API: read the board, add and set sensors, replay a CSV file, add and remove parts.</summary>
    public static IEndpointRouteBuilder MapHardwareApi(this IEndpointRouteBuilder app)
    {
        var api = app.MapGroup("/api/hardware");
        api.MapGet("/", (VirtualBoard board) => TypedResults.Ok(View(board))).WithName("GetHardware");
        // Changing the board changes what devices read: the token guards it like any other state change.
        api.MapPut("/sensors/{port:int}", PutSensor).WithName("PutSensor").RequireNightlightToken();
        api.MapPost("/sensors/{port:int}/replay", PostReplayAsync).WithName("ReplaySensor").RequireNightlightToken();
        api.MapPut("/actuators/{port:int}", PutActuator).WithName("PutActuator").RequireNightlightToken();
        api.MapDelete("/ports/{port:int}", (int port, VirtualBoard board) =>
            board.Remove(port) ? Results.NoContent() : Results.NotFound()).WithName("FreePort").RequireNightlightToken();
        return app;
    }

    static Results<Ok<SensorView>, BadRequest<string>, Conflict<string>> PutSensor(int port, SensorRequest change, VirtualBoard board)
    {
        if (!VirtualBoard.IsValidPort(port))
        {
            return TypedResults.BadRequest($"ports run from {VirtualBoard.FirstPort} to {VirtualBoard.LastPort}");
        }
        SensorMode? mode = null;
        if (change.Mode is not null)
        {
            if (!Enum.TryParse<SensorMode>(change.Mode, ignoreCase: true, out var parsed) || !Enum.IsDefined(parsed))
            {
                return TypedResults.BadRequest($"mode '{change.Mode}' is not one of {string.Join(", ", Enum.GetNames<SensorMode>())}");
            }
            mode = parsed;
        }
        if (!board.TryGetSensor(port, out var sensor))
        {
            if (!board.IsFree(port))
            {
                return TypedResults.Conflict($"port {port} has an actuator");
            }
            if (!Enum.TryParse<SensorKind>(change.Kind, ignoreCase: true, out var kind) || !Enum.IsDefined(kind))
            {
                return TypedResults.BadRequest($"kind '{change.Kind}' is not one of {string.Join(", ", Enum.GetNames<SensorKind>())}");
            }
            try
            {
                sensor = board.AddSensor(port, kind);
            }
            catch (InvalidOperationException e)
            {
                return TypedResults.Conflict(e.Message);
            }
        }
        var s = sensor.Settings;
        sensor.Apply(s with
        {
            Mode = mode ?? s.Mode,
            Value = change.Value ?? s.Value,
            Minimum = change.Minimum ?? s.Minimum,
            Maximum = change.Maximum ?? s.Maximum,
            ReplayStep = change.ReplayStepSeconds is > 0 and < 86400 ? TimeSpan.FromSeconds(change.ReplayStepSeconds.Value) : s.ReplayStep,
        });
        return TypedResults.Ok(View(sensor));
    }

    static async Task<Results<Ok<SensorView>, NotFound, BadRequest<string>>> PostReplayAsync(int port, HttpRequest request, VirtualBoard board,
        CancellationToken cancellationToken)
    {
        if (!board.TryGetSensor(port, out var sensor))
        {
            return TypedResults.NotFound();
        }
        var body = await ReadBodyAsync(request, MaxCsvBytes, cancellationToken);
        if (body is null)
        {
            return TypedResults.BadRequest($"the CSV file is over {MaxCsvBytes / 1024} KiB");
        }
        var values = ReplayCsv.Read(System.Text.Encoding.UTF8.GetString(body));
        if (values.Count == 0)
        {
            return TypedResults.BadRequest("the CSV file has no numbers: one value per line, or the value in the last column");
        }
        sensor.Apply(sensor.Settings with { Mode = SensorMode.Replay, Replay = values });
        return TypedResults.Ok(View(sensor));
    }

    static Results<Ok<ActuatorView>, BadRequest<string>, Conflict<string>> PutActuator(int port, ActuatorRequest request, VirtualBoard board)
    {
        if (!VirtualBoard.IsValidPort(port))
        {
            return TypedResults.BadRequest($"ports run from {VirtualBoard.FirstPort} to {VirtualBoard.LastPort}");
        }
        if (!Enum.TryParse<ActuatorKind>(request.Kind, ignoreCase: true, out var kind) || !Enum.IsDefined(kind))
        {
            return TypedResults.BadRequest($"kind '{request.Kind}' is not one of {string.Join(", ", Enum.GetNames<ActuatorKind>())}");
        }
        if (board.TryGetActuator(port, out var existing) && existing.Kind == kind)
        {
            return TypedResults.Ok(new ActuatorView(port, kind.ToString(), existing.IsOn));
        }
        if (!board.IsFree(port))
        {
            return TypedResults.Conflict($"port {port} is in use");
        }
        try
        {
            var actuator = board.AddActuator(port, kind);
            return TypedResults.Ok(new ActuatorView(port, kind.ToString(), actuator.IsOn));
        }
        catch (InvalidOperationException e)
        {
            return TypedResults.Conflict(e.Message);
        }
    }

    /// <summary>The board as the page shows it.</summary>
    public static BoardView View(VirtualBoard board) => new(
        board.LastContact,
        [.. board.Sensors.Select(View)],
        [.. board.Actuators.Select(a => new ActuatorView(a.Port, a.Kind.ToString(), a.IsOn))]);

    static SensorView View(VirtualSensor sensor)
    {
        var s = sensor.Settings;
        return new SensorView(sensor.Port, sensor.Kind.ToString(), s.Mode.ToString(), s.Value, sensor.Read(), s.Minimum, s.Maximum,
            sensor.Range.Minimum, sensor.Range.Maximum, sensor.Range.Unit, s.Replay.Count, s.ReplayStep.TotalSeconds);
    }

    /// <summary>Reads the request body up to <paramref name="limit"/> bytes; null when it is longer.</summary>
    static async Task<byte[]?> ReadBodyAsync(HttpRequest request, int limit, CancellationToken cancellationToken)
    {
        using var buffer = new MemoryStream();
        var chunk = new byte[16 * 1024];
        int read;
        while ((read = await request.Body.ReadAsync(chunk, cancellationToken)) > 0)
        {
            if (buffer.Length + read > limit)
            {
                return null;
            }
            buffer.Write(chunk, 0, read);
        }
        return buffer.ToArray();
    }
}

/// <summary>Reads replay values from CSV text: the last number on each line; a header or other text lines are skipped.</summary>
public static class ReplayCsv
{
    /// <summary>Most values replayed from one file.</summary>
    public const int MaxValues = 100_000;

    /// <summary>The values, in file order.</summary>
    public static IReadOnlyList<double> Read(string text)
    {
        var values = new List<double>();
        foreach (var line in text.Split('\n'))
        {
            var fields = line.Split([',', ';', '\t'], StringSplitOptions.TrimEntries);
            for (var i = fields.Length - 1; i >= 0; i--)
            {
                if (double.TryParse(fields[i].Trim('"'), NumberStyles.Float, CultureInfo.InvariantCulture, out var value) && double.IsFinite(value))
                {
                    values.Add(value);
                    break;
                }
            }
            if (values.Count == MaxValues)
            {
                break;
            }
        }
        return values;
    }
}
