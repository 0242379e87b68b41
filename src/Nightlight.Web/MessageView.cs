using System.Text;
using Microsoft.Extensions.Hosting;
using Nightlight.Mqtt;
using Nightlight.Protocol;

namespace Nightlight.Web;

/// <summary>
/// The dashboard's live MQTT message view: every message the embedded broker accepts goes to open pages as an
/// <c>mqtt</c> event (time, topic, payload, QoS, retained, sender, direction), what <c>mosquitto_sub -t '#' -v</c>
/// would show and more. At most <see cref="PerSecond"/> a second; the next one shown says how many were left out, so a
/// fleet never floods a page.
/// </summary>
sealed class MessageView(LiveEvents events, BrokerMessageTap? tap = null) : IHostedService
{
    /// <summary>Messages a second sent to the pages.</summary>
    public const int PerSecond = 50;

    readonly Lock _gate = new();
    IDisposable? _watch;
    long _windowStart;
    int _inWindow;
    long _skipped;

    public Task StartAsync(CancellationToken cancellationToken)
    {
        // Copied out of the broker only while a page is open.
        _watch = tap?.Watch(() => events.Listeners > 0, Show);
        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken)
    {
        _watch?.Dispose();
        return Task.CompletedTask;
    }

    void Show(TappedMessage message)
    {
        long skipped;
        lock (_gate)
        {
            var now = Environment.TickCount64;
            if (now - _windowStart >= 1000)
            {
                _windowStart = now;
                _inWindow = 0;
            }
            if (++_inWindow > PerSecond)
            {
                _skipped++;
                return;
            }
            skipped = _skipped;
            _skipped = 0;
        }
        var device = Topics.TryParseDeviceTopic(message.Topic, out var id, out var level) ? id : null;
        events.Publish("mqtt", new
        {
            ts = message.At,
            topic = message.Topic,
            payload = Text(message),
            size = message.Size,
            qos = message.Qos,
            retain = message.Retain,
            from = message.SenderClientId,
            device,
            direction = Direction(device is null ? null : level),
            skipped,
        });
    }

    /// <summary>Which way the lesson's picture sends it: up (device to server), down (server to device), or other.</summary>
    static string Direction(string? level) => level switch
    {
        Topics.TelemetryLevel or Topics.StatusLevel or Topics.AcksLevel => "up",
        Topics.CommandsLevel or Topics.StoredLevel => "down",
        _ => "other",
    };

    // Payloads are the devices' bytes: shown as text with control characters replaced, cut where they were cut.
    static string Text(TappedMessage message)
    {
        var text = TelemetryParser.Printable(Encoding.UTF8.GetString(message.Payload), BrokerMessageTap.MaxPayloadBytes);
        return message.Size > message.Payload.Length ? text + "…" : text;
    }
}
