using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Nightlight.Broker;

/// <summary>
/// New connections a second per remote IP address (<c>Broker:MaxConnectRate</c>, one second's worth at once). A
/// connection over the limit is closed before MQTTnet sees a byte of it: no CONNECT parsing, no password hashing.
/// Each refusal is counted; one line is logged per burst (when an address starts being refused), so a flood cannot
/// flood the log. Other addresses are unaffected. Loopback is exempt unless <c>Broker:LimitLoopbackConnections</c>,
/// so fleets and benchmarks on one machine can open thousands of connections at once.
/// </summary>
sealed partial class ConnectionRateLimit(IOptions<BrokerOptions> options, BrokerMetrics metrics, ILogger<ConnectionRateLimit> logger)
{
    // Idle addresses are forgotten, so many addresses (an IPv6 range) cannot grow the table without bound.
    static readonly long IdleTicks = Stopwatch.Frequency * 10;

    readonly ConcurrentDictionary<IPAddress, Bucket> _buckets = new();
    long _nextPrune = Stopwatch.GetTimestamp() + IdleTicks;

    /// <summary>True when a new connection from <paramref name="remote"/> may go on; false when it must be closed.</summary>
    public bool TryAdmit(EndPoint? remote)
    {
        var o = options.Value;
        if (o.MaxConnectRate <= 0 || remote is not IPEndPoint endpoint)
        {
            return true;
        }
        var address = endpoint.Address.IsIPv4MappedToIPv6 ? endpoint.Address.MapToIPv4() : endpoint.Address;
        if (IPAddress.IsLoopback(address) && !o.LimitLoopbackConnections)
        {
            return true;
        }
        var now = Stopwatch.GetTimestamp();
        Prune(now);
        var bucket = _buckets.GetOrAdd(address, _ => new Bucket(o.MaxConnectRate, now));
        bool burstStarts;
        lock (bucket)
        {
            bucket.Tokens = Math.Min(o.MaxConnectRate, bucket.Tokens + (now - bucket.Last) / (double)Stopwatch.Frequency * o.MaxConnectRate);
            bucket.Last = now;
            if (bucket.Tokens >= 1)
            {
                bucket.Tokens -= 1;
                return true;
            }
            // A burst is refusals less than a second apart; the connections it lets through do not end it.
            burstStarts = now - bucket.LastRefused > Stopwatch.Frequency;
            bucket.LastRefused = now;
        }
        var total = metrics.ConnectionRateLimited();
        if (burstStarts)
        {
            LogBurst(address.ToString(), o.MaxConnectRate, total);
        }
        return false;
    }

    void Prune(long now)
    {
        var due = Volatile.Read(ref _nextPrune);
        if (now < due || Interlocked.CompareExchange(ref _nextPrune, now + IdleTicks, due) != due)
        {
            return;
        }
        foreach (var (address, bucket) in _buckets)
        {
            if (now - Volatile.Read(ref bucket.Last) > IdleTicks)
            {
                _buckets.TryRemove(address, out _);
            }
        }
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "Closing new connections from {Address}: more than Broker:MaxConnectRate {Rate} a second; the rest of this burst is counted, not logged ({Total} refused so far)")]
    partial void LogBurst(string address, int rate, long total);

    sealed class Bucket(double tokens, long last)
    {
        public double Tokens = tokens;
        public long Last = last;
        public long LastRefused = long.MinValue / 2;
    }
}
