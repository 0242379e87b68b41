using System.Buffers;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.IO.Pipelines;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Nightlight.Protocol;

namespace Nightlight.Broker;

/// <summary>
/// Connections whose publishes are not rate limited (servers, in-process clients), by remote end point. The
/// broker's connection check adds them; the guard removes them when the connection ends.
/// </summary>
public sealed class RateLimitExemptions
{
    readonly ConcurrentDictionary<string, byte> _endpoints = new(StringComparer.Ordinal);

    public void Add(string? endpoint)
    {
        if (endpoint is not null)
        {
            _endpoints[endpoint] = 0;
        }
    }

    public bool Contains(string endpoint) => _endpoints.ContainsKey(endpoint);

    public void Remove(string endpoint) => _endpoints.TryRemove(endpoint, out _);
}

/// <summary>
/// Kestrel connection middleware in front of MQTTnet that reads only MQTT's framing (fixed header and remaining
/// length), never the packets themselves. MQTTnet buffers a whole packet before it looks at it, and accepts packets
/// up to 256 MB and connections that never send CONNECT; this guard closes, before MQTTnet sees a byte of them:
/// a packet larger than <c>Broker:MaxPacketSize</c>, a malformed length, a first packet that is not CONNECT,
/// and a connection that takes longer than <c>Broker:ReadTimeout</c> to send CONNECT or to finish a packet it began.
/// It also holds each client to <c>Broker:MaxPublishRate</c> PUBLISH packets a second by reading more slowly
/// (TCP back-pressure: nothing is dropped, the flooder waits, everyone else is served as before).
/// </summary>
sealed partial class MqttFrameGuard(IOptions<BrokerOptions> options, BrokerMetrics metrics, RateLimitExemptions exemptions,
    ConnectionRateLimit connectRate, ILogger<MqttFrameGuard> logger)
{
    const int ConnectPacketType = 1;
    const int PublishPacketType = 3;

    readonly LogBudget _logBudget = new(10);

    public ConnectionDelegate Wrap(ConnectionDelegate next) => context => RunAsync(context, next);

    async Task RunAsync(ConnectionContext context, ConnectionDelegate next)
    {
        if (!connectRate.TryAdmit(context.RemoteEndPoint))
        {
            context.Abort(new ConnectionAbortedException("Broker:MaxConnectRate"));
            return;
        }
        var original = context.Transport;
        var pipe = new Pipe(new PipeOptions(pauseWriterThreshold: 1024 * 1024, resumeWriterThreshold: 512 * 1024, useSynchronizationContext: false));
        context.Transport = new GuardedTransport(pipe.Reader, original.Output);
        var endpoint = context.RemoteEndPoint?.ToString() ?? context.ConnectionId;
        var pump = PumpAsync(context, original.Input, pipe.Writer, endpoint);
        try
        {
            await next(context);
        }
        finally
        {
            original.Input.CancelPendingRead();
            await pump;
            await pipe.Reader.CompleteAsync();
            context.Transport = original;
            exemptions.Remove(endpoint);
        }
    }

    async Task PumpAsync(ConnectionContext context, PipeReader input, PipeWriter output, string endpoint)
    {
        var o = options.Value;
        var readTimeout = Durations.Parse(o.ReadTimeout, "Broker:ReadTimeout");
        var sawConnect = false;
        var exempt = false;
        var bucket = new TokenBucket(o.MaxPublishRate);
        string? violation = null;
        try
        {
            // Until CONNECT has arrived, and while a packet is half-read, the client is on the clock.
            var clockStarted = Stopwatch.GetTimestamp();
            long leftover = 0;
            while (true)
            {
                var onTheClock = !sawConnect || leftover > 0;
                ReadResult read;
                using (var deadline = new CancellationTokenSource())
                {
                    if (onTheClock)
                    {
                        var left = readTimeout - Stopwatch.GetElapsedTime(clockStarted);
                        deadline.CancelAfter(left > TimeSpan.Zero ? left : TimeSpan.Zero);
                    }
                    try
                    {
                        read = await input.ReadAsync(deadline.Token);
                    }
                    catch (OperationCanceledException) when (deadline.IsCancellationRequested)
                    {
                        var reason = sawConnect ? "a packet was left unfinished" : "no CONNECT arrived";
                        violation = reason;
                        metrics.ConnectionTimedOut();
                        if (_logBudget.TryTake(out _))
                        {
                            LogTimedOut(endpoint, reason, readTimeout.TotalSeconds);
                        }
                        return;
                    }
                }
                if (read.IsCanceled)
                {
                    return;
                }
                var buffer = read.Buffer;
                while (TryReadFrame(buffer, out var type, out var frameLength, out var problem, o.MaxPacketSize))
                {
                    if (!sawConnect && type != ConnectPacketType)
                    {
                        problem = $"first packet is type {type}, not CONNECT";
                    }
                    if (problem is not null)
                    {
                        violation = problem;
                        break;
                    }
                    sawConnect = true;
                    if (type == PublishPacketType && !exempt && !bucket.TryTake())
                    {
                        exempt = exemptions.Contains(endpoint);
                        if (!exempt)
                        {
                            // Everything before this publish goes through now; the publish waits for its turn.
                            await output.FlushAsync();
                            ReportThrottled(endpoint);
                            await bucket.WaitAsync();
                        }
                    }
                    foreach (var segment in buffer.Slice(0, frameLength))
                    {
                        output.Write(segment.Span);
                    }
                    buffer = buffer.Slice(frameLength);
                }
                if (violation is null && buffer.Length > 0 && PeekProblem(buffer, o.MaxPacketSize) is { } early)
                {
                    violation = early;
                }
                if (violation is not null)
                {
                    metrics.PacketRefused();
                    if (_logBudget.TryTake(out _))
                    {
                        LogRefusedPacket(endpoint, violation);
                    }
                    return;
                }
                input.AdvanceTo(buffer.Start, buffer.End);
                if (sawConnect && leftover == 0 && buffer.Length > 0)
                {
                    clockStarted = Stopwatch.GetTimestamp();
                }
                leftover = buffer.Length;
                var flushed = await output.FlushAsync();
                if (flushed.IsCompleted || read.IsCompleted)
                {
                    return;
                }
            }
        }
        catch (Exception)
        {
            // The client went away, or MQTTnet gave up on the connection (it completes its reader with the decode
            // error, which surfaces here on flush); either way this connection is over and MQTTnet has said why.
        }
        finally
        {
            if (violation is not null)
            {
                context.Abort(new ConnectionAbortedException(violation));
            }
            await output.CompleteAsync();
        }
    }

    /// <summary>Reads one frame's fixed header; true when the whole frame is in <paramref name="buffer"/> or it is already refused.</summary>
    static bool TryReadFrame(ReadOnlySequence<byte> buffer, out int type, out long frameLength, out string? problem, int maxPacketSize)
    {
        type = 0;
        frameLength = 0;
        problem = null;
        if (!TryReadHeader(buffer, out var first, out var headerLength, out var remaining, out problem))
        {
            return problem is not null;
        }
        type = first >> 4;
        if (type == 0 || type == 15)
        {
            problem = $"packet type {type} does not exist";
            return true;
        }
        if (headerLength + remaining > maxPacketSize)
        {
            problem = $"packet of {headerLength + remaining} bytes exceeds Broker:MaxPacketSize {maxPacketSize}";
            return true;
        }
        frameLength = headerLength + remaining;
        return buffer.Length >= frameLength;
    }

    /// <summary>A problem visible in an incomplete frame's header (too large, bad length), so it is refused before it is buffered.</summary>
    static string? PeekProblem(ReadOnlySequence<byte> buffer, int maxPacketSize)
    {
        TryReadFrame(buffer, out _, out _, out var problem, maxPacketSize);
        return problem;
    }

    static bool TryReadHeader(ReadOnlySequence<byte> buffer, out byte first, out int headerLength, out long remaining, out string? problem)
    {
        first = 0;
        headerLength = 0;
        remaining = 0;
        problem = null;
        var reader = new SequenceReader<byte>(buffer);
        if (!reader.TryRead(out first))
        {
            return false;
        }
        var multiplier = 1L;
        for (var i = 0; i < 4; i++)
        {
            if (!reader.TryRead(out var b))
            {
                return false;
            }
            remaining += (b & 0x7F) * multiplier;
            multiplier *= 128;
            if ((b & 0x80) == 0)
            {
                headerLength = 2 + i;
                return true;
            }
        }
        problem = "malformed remaining length";
        return false;
    }

    void ReportThrottled(string endpoint)
    {
        var total = metrics.PublishThrottled();
        if (total == 1 || total % 10_000 == 0)
        {
            LogThrottled(endpoint, options.Value.MaxPublishRate, total);
        }
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "Closed connection from {Endpoint}: {Reason}")]
    partial void LogRefusedPacket(string endpoint, string reason);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Closed connection from {Endpoint}: {Reason} within {Seconds} s (Broker:ReadTimeout)")]
    partial void LogTimedOut(string endpoint, string reason, double seconds);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Client at {Endpoint} publishes faster than Broker:MaxPublishRate {Rate}/s; reading it more slowly ({Total} publishes held back so far)")]
    partial void LogThrottled(string endpoint, int rate, long total);

    sealed class GuardedTransport(PipeReader input, PipeWriter output) : IDuplexPipe
    {
        public PipeReader Input { get; } = input;
        public PipeWriter Output { get; } = output;
    }

    /// <summary>Tokens for PUBLISH packets: <c>rate</c> a second, up to one second's worth saved up. Rate 0: unlimited.</summary>
    sealed class TokenBucket(int rate)
    {
        double _tokens = rate;
        long _last = Stopwatch.GetTimestamp();

        public bool TryTake()
        {
            if (rate <= 0)
            {
                return true;
            }
            var now = Stopwatch.GetTimestamp();
            _tokens = Math.Min(rate, _tokens + (now - _last) / (double)Stopwatch.Frequency * rate);
            _last = now;
            if (_tokens >= 1)
            {
                _tokens -= 1;
                return true;
            }
            return false;
        }

        public async Task WaitAsync()
        {
            while (!TryTake())
            {
                await Task.Delay(TimeSpan.FromSeconds(Math.Max(0.001, (1 - _tokens) / rate)));
            }
        }
    }
}
