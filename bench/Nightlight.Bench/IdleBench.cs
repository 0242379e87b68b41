using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using Nightlight.Cli.Bench;

namespace Nightlight.Bench;

/// <summary>
/// <c>idle --nightlight PATH [--devices 1000,10000] [--brokers ours,mosquitto]</c>: how long N devices take
/// to connect (each subscribing to its own <c>{id}/commands</c>, as the lesson's device does) and what each idle
/// one costs the broker in resident memory. Each broker is started here, on a free loopback port, once per count.
/// </summary>
static class IdleBench
{
    public static async Task<int> RunAsync(string[] args)
    {
        var nightlight = BenchArgs.Option(args, "--nightlight");
        var counts = (BenchArgs.Option(args, "--devices") ?? "1000,10000").Split(',').Select(c => int.Parse(c, CultureInfo.InvariantCulture)).ToList();
        var brokers = (BenchArgs.Option(args, "--brokers") ?? "ours,mosquitto").Split(',');
        if (brokers.Any(b => b.StartsWith("ours", StringComparison.Ordinal)) && nightlight is null)
        {
            Console.Error.WriteLine("idle: --nightlight PATH (the built nightlight executable) is needed for the 'ours' brokers");
            return 2;
        }
        Console.WriteLine($"Machine: {Environment.ProcessorCount} cores, {Environment.OSVersion}, .NET {Environment.Version}");
        Console.WriteLine();
        Console.WriteLine("| broker | devices | connected in (s) | connects/s | broker RSS before (MB) | with devices (MB) | KB per idle device |");
        Console.WriteLine("|---|---|---|---|---|---|---|");
        foreach (var broker in brokers)
        {
            foreach (var count in counts)
            {
                var port = BenchArgs.FreePort();
                using var process = StartBroker(broker, port, nightlight);
                try
                {
                    await WaitForPortAsync(port, TimeSpan.FromSeconds(60));
                    await Task.Delay(TimeSpan.FromSeconds(2));
                    var before = ResidentKb(process.Id);
                    var clients = new List<BenchConnection>(count);
                    var clock = Stopwatch.StartNew();
                    await ConnectAsync(port, count, clients);
                    var seconds = clock.Elapsed.TotalSeconds;
                    // Let the broker settle (buffers returned, a GC run) before reading its memory.
                    await Task.Delay(TimeSpan.FromSeconds(5));
                    var after = ResidentKb(process.Id);
                    Console.WriteLine($"| {broker} | {count:N0} | {seconds:F1} | {count / seconds:N0} | {before / 1024.0:F0} | {after / 1024.0:F0} | {(after - before) / (double)count:F1} |");
                    foreach (var client in clients)
                    {
                        client.Dispose();
                    }
                }
                finally
                {
                    process.Kill(entireProcessTree: true);
                    await process.WaitForExitAsync();
                }
            }
        }
        return 0;
    }

    static async Task ConnectAsync(int port, int count, List<BenchConnection> clients)
    {
        // The same lean MQTT 3.1.1 connection as the load generator: the client side should not be what is measured.
        using var gate = new SemaphoreSlim(64);
        var done = 0;
        await Task.WhenAll(Enumerable.Range(1, count).Select(async i =>
        {
            await gate.WaitAsync();
            try
            {
                var id = $"idle{i:D5}";
                var client = await BenchConnection.OpenAsync("127.0.0.1", port, $"{id}nightlight_client", null, null, $"{id}/commands", _ => { },
                    CancellationToken.None, keepAliveSeconds: 300);
                lock (clients)
                {
                    clients.Add(client);
                }
                var n = Interlocked.Increment(ref done);
                if (n % 2000 == 0)
                {
                    Console.Error.WriteLine($"idle: {n}/{count} connected");
                }
            }
            finally
            {
                gate.Release();
            }
        }));
    }

    static Process StartBroker(string broker, int port, string? nightlight)
    {
        var start = broker switch
        {
            "ours" => new ProcessStartInfo(nightlight!, ["broker", "--mqtt-port", port.ToString(CultureInfo.InvariantCulture), "--http-port", "0"]),
            "mosquitto" => new ProcessStartInfo("/usr/sbin/mosquitto", ["-p", port.ToString(CultureInfo.InvariantCulture)]),
            _ => throw new ArgumentException($"unknown broker '{broker}' (ours, mosquitto)"),
        };
        start.RedirectStandardOutput = true;
        start.RedirectStandardError = true;
        var process = Process.Start(start) ?? throw new InvalidOperationException($"could not start {broker}");
        // Drain its output so a chatty broker never blocks on a full pipe.
        process.OutputDataReceived += (_, _) => { };
        process.ErrorDataReceived += (_, _) => { };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return process;
    }

    static long ResidentKb(int pid)
    {
        // --nightlight is the built apphost, so the process started is the broker itself, not a `dotnet` launcher.
        var line = File.ReadLines($"/proc/{pid}/status").First(l => l.StartsWith("VmRSS:", StringComparison.Ordinal));
        return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture);
    }

    static async Task WaitForPortAsync(int port, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            try
            {
                using var probe = new TcpClient();
                await probe.ConnectAsync(IPAddress.Loopback, port);
                return;
            }
            catch (SocketException) when (DateTime.UtcNow < deadline)
            {
                await Task.Delay(200);
            }
        }
    }
}
