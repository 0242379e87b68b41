using Microsoft.Extensions.Logging;

namespace Nightlight.Hardware;

/// <summary>
/// What a nightlight reads and switches: the in-process <see cref="VirtualBoard"/> (light sensor on port 0, LED on
/// port 5), or a CounterFit-compatible app at an HTTP address. Owns the CounterFit client, not the board.
/// </summary>
public sealed class NightlightHardware : IDisposable
{
    NightlightHardware(ILightSensor light, ILed led, VirtualBoard? board, CounterFitHardware? remote)
    {
        Light = light;
        Led = led;
        Board = board;
        Remote = remote;
    }

    /// <summary>The light sensor: 0–1023 raw ADC counts.</summary>
    public ILightSensor Light { get; }

    /// <summary>The LED.</summary>
    public ILed Led { get; }

    /// <summary>The in-process board, or null when the hardware is a CounterFit app.</summary>
    public VirtualBoard? Board { get; }

    /// <summary>The CounterFit app, or null when the hardware is the in-process board.</summary>
    public CounterFitHardware? Remote { get; }

    /// <summary>
    /// The CounterFit app at <paramref name="counterFitAddress"/> (<c>http://HOST:PORT</c>); when that is null or empty,
    /// the board from <paramref name="board"/>, which is asked for only then.
    /// </summary>
    public static NightlightHardware Select(string? counterFitAddress, Func<VirtualBoard> board)
    {
        if (!string.IsNullOrEmpty(counterFitAddress))
        {
            var remote = new CounterFitHardware(new Uri(counterFitAddress));
            return new NightlightHardware(remote.LightSensor(), remote.Led(), null, remote);
        }
        var local = board();
        return new NightlightHardware(new BoardLightSensor(local), new BoardLed(local), local, null);
    }

    /// <summary>
    /// Tells a CounterFit app the device is connected (nothing to do for the board). An app that does not answer is
    /// logged and the device goes on, as the lesson's does: readings are skipped until the hardware answers.
    /// </summary>
    public async Task ConnectAsync(ILogger logger, CancellationToken cancellationToken)
    {
        if (Remote is null)
        {
            return;
        }
        try
        {
            await Remote.ConnectAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is HttpRequestException or TaskCanceledException && !cancellationToken.IsCancellationRequested)
        {
            logger.LogWarning("Hardware at {Address} did not answer /connect: {Error}", Remote.BaseAddress, e.Message);
        }
    }

    /// <summary>Disposes the CounterFit client, if any.</summary>
    public void Dispose() => Remote?.Dispose();
}
