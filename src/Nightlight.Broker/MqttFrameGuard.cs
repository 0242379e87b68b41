using System.Buffers;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.IO.Pipelines;
using System.Runtime.CompilerServices;
using System.Threading.Tasks.Sources;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Nightlight.Protocol;
using Nightlight.Security;

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
    readonly BrokerOptions _options = options.Value;
    readonly TimeSpan _readTimeout = Durations.Parse(options.Value.ReadTimeout, "Broker:ReadTimeout");
    readonly BrokerMetrics _metrics = metrics;
    readonly RateLimitExemptions _exemptions = exemptions;

    public ConnectionDelegate Wrap(ConnectionDelegate next) => context => RunAsync(context, next);

    async Task RunAsync(ConnectionContext context, ConnectionDelegate next)
    {
        if (!connectRate.TryAdmit(context.RemoteEndPoint))
        {
            context.Abort(new ConnectionAbortedException("Broker:MaxConnectRate"));
            return;
        }
        var original = context.Transport;
        var endpoint = context.RemoteEndPoint?.ToString() ?? context.ConnectionId;
        // The guard checks the bytes in Kestrel's own buffer as MQTTnet reads them: no copy, no second pipe, no thread hop.
        context.Transport = new GuardedTransport(new GuardedReader(this, context, original.Input, endpoint), original.Output);
        try
        {
            await next(context);
        }
        finally
        {
            context.Transport = original;
            _exemptions.Remove(endpoint);
        }
    }

    /// <summary>
    /// The connection's input as MQTTnet sees it. Each read checks the frames that arrived since the last one, before
    /// MQTTnet sees any of their bytes; a PUBLISH over the client's rate is shown only when its token is due.
    /// </summary>
    sealed class GuardedReader(MqttFrameGuard guard, ConnectionContext context, PipeReader inner, string endpoint) : PipeReader, IValueTaskSource<ReadResult>
    {
        readonly TokenBucket _bucket = new(guard._options.MaxPublishRate);
        bool _sawConnect;
        bool _exempt;
        bool _tokenInHand;
        long _checked;
        long _partial;
        long _clockStarted = Stopwatch.GetTimestamp();
        ReadOnlySequence<byte> _shown;
        string? _violation;

        /// <summary>Until CONNECT has arrived, and while a packet is half-read, the client is on the clock.</summary>
        bool OnTheClock => !_sawConnect || _partial > 0;

        // The waiting read of the common case (connected, no packet half-read): this reader completes it itself.
        ManualResetValueTaskSourceCore<ReadResult> _waiting;
        ConfiguredValueTaskAwaitable<ReadResult>.ConfiguredValueTaskAwaiter _innerRead;
        CancellationToken _waitingToken;
        Action? _onInnerRead;

        /// <remarks>
        /// A connection waits in here between packets, and with thousands of connections each one's wait lives until
        /// its next packet, long enough for the garbage collector to find it and copy it into an older generation. So
        /// the common case has no state machine: a read that must wait is completed through this reader itself
        /// (<see cref="IValueTaskSource{TResult}"/>), and a connection waiting for its next packet leaves no new object
        /// (docs/benchmarks/gc-and-jit.md#per-connection-objects). Reads on the clock (before CONNECT, inside a packet)
        /// and a publish held back for its token take <see cref="ReadCheckedAsync"/>.
        /// </remarks>
        public override ValueTask<ReadResult> ReadAsync(CancellationToken cancellationToken = default)
        {
            if (_violation is not null || OnTheClock)
            {
                return ReadCheckedAsync(cancellationToken);
            }
            var pending = inner.ReadAsync(cancellationToken);
            if (pending.IsCompleted)
            {
                return Show(pending.GetAwaiter().GetResult(), cancellationToken);
            }
            _waiting.Reset();
            _waitingToken = cancellationToken;
            _innerRead = pending.ConfigureAwait(false).GetAwaiter();
            _innerRead.UnsafeOnCompleted(_onInnerRead ??= OnInnerRead);
            return new ValueTask<ReadResult>(this, _waiting.Version);
        }

        /// <summary>What MQTTnet may see of <paramref name="read"/>; a publish over the rate waits for its token first.</summary>
        ValueTask<ReadResult> Show(ReadResult read, CancellationToken cancellationToken)
        {
            if (Inspect(read, out var shown))
            {
                return new ValueTask<ReadResult>(shown);
            }
            inner.AdvanceTo(read.Buffer.Start);
            return WaitForTokenAsync(cancellationToken);
        }

        void OnInnerRead()
        {
            ValueTask<ReadResult> shown;
            try
            {
                shown = Show(_innerRead.GetResult(), _waitingToken);
            }
            catch (Exception e)
            {
                _waiting.SetException(e);
                return;
            }
            // Outside the try: completing runs MQTTnet's continuation, which must not be completed a second time.
            if (shown.IsCompletedSuccessfully)
            {
                _waiting.SetResult(shown.Result);
                return;
            }
            _ = CompleteWhenShownAsync(shown);
        }

        async Task CompleteWhenShownAsync(ValueTask<ReadResult> shown)
        {
            try
            {
                _waiting.SetResult(await shown);
            }
            catch (Exception e)
            {
                _waiting.SetException(e);
            }
        }

        async ValueTask<ReadResult> WaitForTokenAsync(CancellationToken cancellationToken)
        {
            guard.ReportThrottled(endpoint);
            await _bucket.WaitAsync();
            _tokenInHand = true;
            return await ReadCheckedAsync(cancellationToken);
        }

        ReadResult IValueTaskSource<ReadResult>.GetResult(short token) => _waiting.GetResult(token);

        ValueTaskSourceStatus IValueTaskSource<ReadResult>.GetStatus(short token) => _waiting.GetStatus(token);

        void IValueTaskSource<ReadResult>.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
            _waiting.OnCompleted(continuation, state, token, flags);

        /// <summary>Every case: on the clock, refused, or waiting for a publish token.</summary>
        async ValueTask<ReadResult> ReadCheckedAsync(CancellationToken cancellationToken)
        {
            if (_violation is not null)
            {
                return Ended;
            }
            ReadResult read;
            if (OnTheClock)
            {
                using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
                var left = guard._readTimeout - Stopwatch.GetElapsedTime(_clockStarted);
                deadline.CancelAfter(left > TimeSpan.Zero ? left : TimeSpan.Zero);
                try
                {
                    read = await inner.ReadAsync(deadline.Token);
                }
                catch (OperationCanceledException) when (deadline.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
                {
                    var reason = _sawConnect ? "a packet was left unfinished" : "no CONNECT arrived";
                    guard._metrics.ConnectionTimedOut();
                    if (guard._logBudget.TryTake(out _))
                    {
                        guard.LogTimedOut(endpoint, reason, guard._readTimeout.TotalSeconds);
                    }
                    Refuse(reason);
                    return Ended;
                }
            }
            else
            {
                read = await inner.ReadAsync(cancellationToken);
            }
            // A publish held back waits for its token here, then this reads again and shows it.
            return await Show(read, cancellationToken);
        }

        /// <summary>What a refused connection's reads return: the end of its input.</summary>
        static readonly ReadResult Ended = new(default, isCanceled: false, isCompleted: true);

        public override bool TryRead(out ReadResult result)
        {
            if (_violation is not null)
            {
                result = Ended;
                return true;
            }
            if (!inner.TryRead(out var read))
            {
                result = default;
                return false;
            }
            if (Inspect(read, out result))
            {
                return true;
            }
            inner.AdvanceTo(read.Buffer.Start);
            return false;
        }

        /// <summary>Checks the frames not checked yet; false when a PUBLISH waiting for its token is the first thing to show.</summary>
        bool Inspect(ReadResult read, out ReadResult shown)
        {
            if (read.IsCanceled)
            {
                shown = read;
                return true;
            }
            var buffer = read.Buffer;
            var rest = buffer.Slice(_checked);
            string? problem = null;
            var waiting = false;
            while (TryReadFrame(rest, out var type, out var frameLength, out problem, guard._options.MaxPacketSize))
            {
                if (!_sawConnect && type != ConnectPacketType)
                {
                    problem = $"first packet is type {type}, not CONNECT";
                }
                if (problem is not null)
                {
                    break;
                }
                if (type == PublishPacketType && !_exempt && !_tokenInHand && !_bucket.TryTake())
                {
                    _exempt = guard._exemptions.Contains(endpoint);
                    if (!_exempt)
                    {
                        waiting = true;
                        break;
                    }
                }
                _tokenInHand = false;
                _sawConnect = true;
                _checked += frameLength;
                rest = rest.Slice(frameLength);
            }
            // The client closed its side inside a packet. MQTTnet would read that tail again and again without waiting
            // (it ends a connection only on an empty completed read), so it sees the whole packets before the tail, and
            // the read after them ends the connection.
            var endedInside = problem is null && !waiting && read.IsCompleted && rest.Length > 0;
            if (endedInside && _checked == 0)
            {
                problem = "the client closed the connection inside a packet";
            }
            if (problem is not null)
            {
                inner.AdvanceTo(buffer.End);
                guard._metrics.PacketRefused();
                if (guard._logBudget.TryTake(out _))
                {
                    guard.LogRefusedPacket(endpoint, problem);
                }
                Refuse(problem);
                shown = Ended;
                return true;
            }
            if (waiting || endedInside)
            {
                // Only the whole packets before it go through now: before a publish waiting for its token, or before
                // the unfinished tail of a closed connection.
                _shown = buffer.Slice(0, _checked);
                shown = new ReadResult(_shown, isCanceled: false, isCompleted: false);
                return _checked > 0;
            }
            var partial = rest.Length;
            if (_sawConnect && _partial == 0 && partial > 0)
            {
                _clockStarted = Stopwatch.GetTimestamp();
            }
            _partial = partial;
            _shown = buffer;
            shown = read;
            return true;
        }

        /// <summary>Ends the connection; its reads end too. The caller has counted and logged why.</summary>
        void Refuse(string reason)
        {
            _violation = reason;
            context.Abort(new ConnectionAbortedException(reason));
        }

        public override void AdvanceTo(SequencePosition consumed) => AdvanceTo(consumed, consumed);

        public override void AdvanceTo(SequencePosition consumed, SequencePosition examined)
        {
            if (_violation is not null)
            {
                return;
            }
            _checked = Math.Max(0, _checked - _shown.Slice(0, consumed).Length);
            _shown = default;
            inner.AdvanceTo(consumed, examined);
        }

        public override void CancelPendingRead() => inner.CancelPendingRead();

        public override void Complete(Exception? exception = null) => inner.Complete(exception);
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
        var total = _metrics.PublishThrottled();
        if (total == 1 || total % 10_000 == 0)
        {
            LogThrottled(endpoint, _options.MaxPublishRate, total);
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
