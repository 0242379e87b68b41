using Nightlight.Hardware;

namespace DeviceSample;

/// <summary>The Nightlight.Hardware README's sample, compiled with the solution so the README cannot drift.</summary>
public static class HardwareSample
{
    /// <summary>
    /// One step of the lesson's loop: read the light (0–1023, raw ADC counts) and switch the LED below 300. On the
    /// in-process board unless <paramref name="counterFit"/> (<c>http://HOST:PORT</c>) names a CounterFit app.
    /// </summary>
    public static async Task<bool> StepAsync(string? counterFit, CancellationToken cancellationToken)
    {
        var board = VirtualBoard.CreateNightlight(light: 250);   // light sensor on port 0, LED on port 5
        using var hardware = NightlightHardware.Select(counterFit, () => board);
        var light = await hardware.Light.ReadAsync(cancellationToken);
        await hardware.Led.SetAsync(light < 300, cancellationToken);
        return hardware.Board?.TryGetActuator(VirtualBoard.LedPort, out var led) == true && led.IsOn;
    }
}
