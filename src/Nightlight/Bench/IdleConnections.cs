using System.Diagnostics;
using System.Net;

namespace Nightlight.Cli.Bench;

/// <summary>
/// <c>nightlight bench --idle N</c>: N devices connect to one broker the way the lesson's device does (CONNECT, then
/// SUBSCRIBE to its own <c>{id}/commands</c>) and stay idle. What is measured: how long they take to connect, and the
/// broker's resident memory (VmRSS, /proc) before and after, per connection.
/// </summary>
static class IdleConnections
{
    /// <summary>Connections from one loopback source address before the next address (127.0.0.2, ...) is used: its ephemeral ports run out near 28,000.</summary>
    public const int PerSourceAddress = 25_000;

    /// <summary>One broker's figures: connect time, resident memory before and after, and its CPU time while they connected.</summary>
    public sealed record Figures(string Broker, int Connections, double ConnectSeconds, double RssBeforeMb, double RssAfterMb, double CpuSeconds)
    {
        public double ConnectsPerSecond => Connections / ConnectSeconds;

        public double KbPerConnection => (RssAfterMb - RssBeforeMb) * 1024 / Connections;
    }

    /// <summary>Fails with what to do when this process may not open <paramref name="count"/> sockets.</summary>
    public static void CheckOpenFilesLimit(int count)
    {
        var needed = count + 200;
        if (ProcStats.OpenFilesLimit() is { } limit && limit < needed)
        {
            throw new InvalidOperationException($"Bench:Idle {count} needs about {needed} open files and the limit here is {limit}: raise it (ulimit -n) for the bench and the broker");
        }
    }

    public static async Task<Figures> MeasureAsync(string broker, int port, int pid, int count, Action<string> progress, CancellationToken cancellationToken)
    {
        // The broker settles from its start first (JIT, first GCs), so the difference is the connections' alone.
        await Task.Delay(TimeSpan.FromSeconds(1), cancellationToken);
        var before = ProcStats.MemoryMb(pid);
        var cpuBefore = ProcStats.CpuSeconds(pid);
        var clients = new BenchConnection[count];
        try
        {
            var clock = Stopwatch.StartNew();
            var done = 0;
            // As many connects under way at once as a fleet coming back after an outage would have, bounded so the
            // bench's own scheduling is not what is measured.
            using var gate = new SemaphoreSlim(64);
            await Task.WhenAll(Enumerable.Range(0, count).Select(async i =>
            {
                await gate.WaitAsync(cancellationToken);
                try
                {
                    var id = $"idle{i:D6}";
                    var source = count > PerSourceAddress ? new IPAddress([127, 0, 0, (byte)(1 + (i / PerSourceAddress))]) : null;
                    clients[i] = await BenchConnection.OpenAsync("127.0.0.1", port, $"{id}nightlight_client", null, null, $"{id}/commands", _ => { },
                        cancellationToken, keepAliveSeconds: 900, localAddress: source);
                    var n = Interlocked.Increment(ref done);
                    if (n % 5000 == 0 && n < count)
                    {
                        progress($"{broker}: {n}/{count} connected");
                    }
                }
                finally
                {
                    gate.Release();
                }
            }));
            var seconds = clock.Elapsed.TotalSeconds;
            var cpu = ProcStats.CpuSeconds(pid) - cpuBefore;
            // Buffers given back and a collection run, as on a broker that has been idle a while.
            await Task.Delay(TimeSpan.FromSeconds(2), cancellationToken);
            var lost = clients.Count(c => !c.IsConnected);
            if (lost > 0)
            {
                throw new InvalidOperationException($"{broker}: {lost} of {count} idle connections were closed by the broker");
            }
            return new Figures(broker, count, seconds, before, ProcStats.MemoryMb(pid), cpu);
        }
        finally
        {
            foreach (var client in clients)
            {
                client?.Dispose();
            }
        }
    }
}
