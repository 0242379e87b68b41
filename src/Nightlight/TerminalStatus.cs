using System.Globalization;
using System.Text;
using Microsoft.Extensions.Options;
using Nightlight.Server;

namespace Nightlight.Cli;

/// <summary>Settings of what the CLI prints (section <c>Output</c>).</summary>
sealed class OutputOptions
{
    public const string Section = "Output";

    /// <summary>Keep a live status line at the bottom of the terminal (only when standard output is a terminal).</summary>
    public bool Status { get; set; } = true;
}

/// <summary>
/// The live status line of <c>up</c> and <c>server</c> on a terminal: devices heard recently, messages per second in
/// and out, bad payloads and the last command, redrawn twice a second below the lesson lines. Redirected output
/// (files, pipes, tests) never sees it.
/// </summary>
sealed class TerminalStatus(ServerMetrics metrics, LessonOutput output, Nightlight.Server.Ingest.ServerLink link,
    IOptions<ServerOptions> server, Nightlight.Server.Commands.ManualOverrides overrides) : BackgroundService
{
    static readonly TimeSpan Redraw = TimeSpan.FromMilliseconds(500);
    // Rates over a few seconds: a device sending once a second reads as a steady 1.0/s, not 0 and 2 by turns.
    static readonly TimeSpan RateWindow = TimeSpan.FromSeconds(3);
    // Heard within this long counts as online; lesson devices send every few seconds.
    static readonly TimeSpan Online = TimeSpan.FromSeconds(15);

    /// <summary>Whether standard output is a terminal that understands redrawing a line in place.</summary>
    public static bool Attached =>
        !Console.IsOutputRedirected && !string.Equals(Environment.GetEnvironmentVariable("TERM"), "dumb", StringComparison.Ordinal);

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var samples = new Queue<(long At, long In, long Out)>();
        using var timer = new PeriodicTimer(Redraw);
        try
        {
            do
            {
                var now = Environment.TickCount64;
                samples.Enqueue((now, metrics.Received, metrics.CommandsSent));
                while (samples.Count > 1 && now - samples.Peek().At > RateWindow.TotalMilliseconds)
                {
                    samples.Dequeue();
                }
                output.ShowStatus(Fit(Describe(samples.Peek(), (now, metrics.Received, metrics.CommandsSent))));
            }
            while (await timer.WaitForNextTickAsync(stoppingToken));
        }
        catch (OperationCanceledException)
        {
        }
        finally
        {
            output.ShowStatus(null);
        }
    }

    string Describe((long At, long In, long Out) first, (long At, long In, long Out) last)
    {
        var seconds = Math.Max((last.At - first.At) / 1000.0, 0.001);
        var text = new StringBuilder(160);
        if (!link.Link.IsConnected)
        {
            // Devices heard a moment ago are not online to a server that cannot answer them.
            return $"── no broker at {server.Value.Broker}: start one (nightlight broker) or check --broker";
        }
        var devices = metrics.DevicesHeardWithin(Online);
        text.Append(CultureInfo.InvariantCulture, $"── {devices} {(devices == 1 ? "device" : "devices")} online");
        text.Append(CultureInfo.InvariantCulture, $" │ in {(last.In - first.In) / seconds:0.0}/s out {(last.Out - first.Out) / seconds:0.0}/s");
        text.Append(CultureInfo.InvariantCulture, $" │ bad payloads {metrics.Rejected}");
        if (metrics.LastCommand is { } command)
        {
            var ago = (Environment.TickCount64 - command.At) / 1000.0;
            text.Append(CultureInfo.InvariantCulture, $" │ last command {command.DeviceId} {command.Command} {ago:0}s ago");
        }
        // An override goes before the rest: it is why the server stopped answering, and the rest may be cut at the edge.
        var active = overrides.All(DateTimeOffset.UtcNow);
        if (active.Count > 0)
        {
            var held = active[0];
            text.Insert(3, $"override {held.DeviceId} LED {(held.LedOn ? "on" : "off")} until {OverrideLines.Time(held.Until)}" +
                (active.Count > 1 ? $" (+{active.Count - 1} more)" : "") + " │ ");
        }
        return text.ToString();
    }

    // A status longer than the terminal is wide would wrap, and clearing one line would no longer erase it.
    static string Fit(string status)
    {
        int width;
        try
        {
            width = Console.WindowWidth;
        }
        catch (IOException)
        {
            width = 80;
        }
        return width > 1 && status.Length >= width ? status[..(width - 1)] : status;
    }
}

/// <summary>Standard error on the same terminal as the status line: each log line is written beside it, not into it.</summary>
sealed class StatusAwareErrorWriter(TextWriter inner, LessonOutput output) : TextWriter
{
    public override Encoding Encoding => inner.Encoding;

    public override void Write(char value) => output.WriteBesideStatus(() => { inner.Write(value); inner.Flush(); });

    public override void Write(string? value) => output.WriteBesideStatus(() => { inner.Write(value); inner.Flush(); });

    public override void WriteLine(string? value) => output.WriteBesideStatus(() => { inner.WriteLine(value); inner.Flush(); });

    public override void Flush() => inner.Flush();
}

static class TerminalStatusExtensions
{
    /// <summary>Adds the live status line when standard output is a terminal and <c>Output:Status</c> is not false.</summary>
    public static void AddTerminalStatus(this IHostApplicationBuilder builder, LessonOutput output)
    {
        var options = builder.Configuration.GetSection(OutputOptions.Section).Get<OutputOptions>() ?? new OutputOptions();
        if (!options.Status || !TerminalStatus.Attached)
        {
            return;
        }
        if (!Console.IsErrorRedirected)
        {
            Console.SetError(new StatusAwareErrorWriter(Console.Error, output));
        }
        output.KeepsStatus = true;
        builder.Services.AddHostedService<TerminalStatus>();
    }
}
