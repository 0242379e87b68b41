using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging.Abstractions;
using MQTTnet;
using MQTTnet.Protocol;
using Nightlight.Cli.Bench;
using Nightlight.Device;
using Nightlight.Mqtt;
using Nightlight.Protocol;

namespace Nightlight.Bench;

/// <summary>
/// <c>outbox [--backlog 100000] [--warmup 20000] [--broker mqtt://HOST:PORT] [--no-subscriber] [--window 100] [--max-inflight N] [--tcp-nodelay] [--protocol 3.1.1|5|auto] [--replay-only]</c>:
/// the outbox's steady-state cost per reading under each fsync policy, and how fast a device replays a backlog after
/// reconnecting, through Mosquitto (started here on a free loopback port unless --broker is given; --max-inflight sets
/// its max_inflight_messages, the Receive Maximum it announces, 20 by default; --tcp-nodelay sets its set_tcp_nodelay,
/// off by default, so its small acknowledgements are not held back by Nagle's algorithm). Each figure is printed with the
/// load average it was measured under.
/// A device that reconnects has been running: before the measured replays, an unmeasured one of --warmup readings
/// (0 for none) lets the runtime finish compiling the replay path, which otherwise takes a third of a core during the
/// first seconds of replay.
/// </summary>
static class OutboxBench
{
    public static async Task<int> RunAsync(string[] args)
    {
        var backlog = int.Parse(BenchArgs.Option(args, "--backlog") ?? "100000", CultureInfo.InvariantCulture);
        var warmup = int.Parse(BenchArgs.Option(args, "--warmup") ?? "20000", CultureInfo.InvariantCulture);
        var broker = BenchArgs.Option(args, "--broker");
        var window = int.Parse(BenchArgs.Option(args, "--window") ?? "100", CultureInfo.InvariantCulture);
        var maxInflight = BenchArgs.Option(args, "--max-inflight");
        var protocol = BenchArgs.Option(args, "--protocol") switch
        {
            null or "auto" => MqttProtocol.Auto,
            "3.1.1" => MqttProtocol.V311,
            "5" => MqttProtocol.V500,
            var other => throw new ArgumentException($"--protocol {other}: expected 3.1.1, 5 or auto"),
        };
        Console.WriteLine($"Machine: {Environment.ProcessorCount} cores, {Environment.OSVersion}, .NET {Environment.Version}; replay window {window}" +
            (maxInflight is null ? "" : $", Mosquitto max_inflight_messages {maxInflight}"));
        Console.WriteLine();
        if (!args.Contains("--replay-only"))
        {
            Console.WriteLine("| fsync policy | readings | append µs/reading | append + send-side read + commit µs/reading | load average |");
            Console.WriteLine("|---|---|---|---|---|");
            foreach (var (sync, count) in new[] { (OutboxSync.Always, 2_000), (OutboxSync.Interval, 100_000), (OutboxSync.Never, 100_000) })
            {
                var (append, cycle) = SteadyState(sync, count);
                Console.WriteLine($"| {sync.ToString().ToLowerInvariant()} | {count:N0} | {append:F1} | {cycle:F1} | {LoadAverage()} |");
            }
            Console.WriteLine();
        }

        Process? mosquitto = null;
        string? mosquittoDirectory = null;
        if (broker is null)
        {
            (mosquitto, mosquittoDirectory, broker) = await StartMosquittoAsync(maxInflight, args.Contains("--tcp-nodelay"));
        }
        try
        {
            Console.WriteLine("| replay | backlog | broker acknowledged all (s) | readings/s | subscriber received all (s) | readings/s | load average |");
            Console.WriteLine("|---|---|---|---|---|---|---|");
            if (warmup > 0)
            {
                var (acked, received) = await ReplayAsync(BrokerAddress.Parse(broker), warmup, MqttQualityOfServiceLevel.AtLeastOnce, !args.Contains("--no-subscriber"), window, protocol);
                Console.WriteLine($"| QoS 1, warm-up (not measured) | {warmup:N0} | {acked:F2} | {warmup / acked:N0} | {received:F2} | {warmup / received:N0} | {LoadAverage()} |");
            }
            foreach (var qos in new[] { MqttQualityOfServiceLevel.AtLeastOnce, MqttQualityOfServiceLevel.AtMostOnce })
            {
                var (acked, received) = await ReplayAsync(BrokerAddress.Parse(broker), backlog, qos, !args.Contains("--no-subscriber"), window, protocol);
                Console.WriteLine($"| QoS {(int)qos} | {backlog:N0} | {acked:F2} | {backlog / acked:N0} | {received:F2} | {backlog / received:N0} | {LoadAverage()} |");
            }
        }
        finally
        {
            if (mosquitto is not null)
            {
                mosquitto.Kill();
                await mosquitto.WaitForExitAsync();
                Directory.Delete(mosquittoDirectory!, recursive: true);
            }
        }
        return 0;
    }

    /// <summary>The 1-minute load average (Linux), so every figure says how busy the machine was.</summary>
    static string LoadAverage() =>
        File.Exists("/proc/loadavg") ? File.ReadAllText("/proc/loadavg").Split(' ')[0] : "?";

    static (double AppendMicros, double CycleMicros) SteadyState(OutboxSync sync, int count)
    {
        var directory = Directory.CreateTempSubdirectory("nightlight-bench-outbox-").FullName;
        try
        {
            var payloads = Enumerable.Range(1, count).Select(i => TelemetryWriter.Write(i % 1024, i, DateTimeOffset.UtcNow)).ToArray();
            using var outbox = new Outbox(directory, new OutboxOptions { Sync = sync });
            var clock = Stopwatch.StartNew();
            foreach (var payload in payloads)
            {
                outbox.Append(payload);
            }
            var append = clock.Elapsed.TotalMicroseconds / count;
            clock.Restart();
            while (outbox.Count > 0)
            {
                var batch = outbox.Peek(256);
                outbox.Commit(batch, batch.Count);
            }
            var read = clock.Elapsed.TotalMicroseconds / count;
            return (append, append + read);
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    static async Task<(double AckedSeconds, double ReceivedSeconds)> ReplayAsync(BrokerAddress broker, int backlog, MqttQualityOfServiceLevel qos, bool subscribe, int window, MqttProtocol protocol)
    {
        var data = Directory.CreateTempSubdirectory("nightlight-bench-device-").FullName;
        var id = $"bench{(int)qos}";
        try
        {
            // The backlog a device builds while offline, written as the device writes it.
            using (var outbox = new Outbox(Path.Combine(data, "outbox"), new OutboxOptions { Sync = OutboxSync.Never, MaxBytes = 1L << 30 }))
            {
                for (var i = 1; i <= backlog; i++)
                {
                    outbox.Append(TelemetryWriter.Write(i % 1024, i, DateTimeOffset.UtcNow));
                }
            }

            // The subscriber is a lean connection (Nightlight.Cli.Bench.BenchConnection) at the replay's QoS: it shares
            // the two cores with the device and Mosquitto, and what it costs is not what is measured.
            var received = 0;
            var all = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            using var subscriber = subscribe
                ? await BenchConnection.OpenAsync(broker.Host, broker.Port, "bench-sub-" + id, null, null, Topics.Telemetry(id), _ =>
                {
                    if (++received == backlog)
                    {
                        all.TrySetResult();
                    }
                }, CancellationToken.None, subscribeQos: (byte)qos)
                : null;
            if (!subscribe)
            {
                all.TrySetResult();
            }

            var clock = Stopwatch.StartNew();
            await using var client = new DeviceClient(new DeviceClientOptions
            {
                Id = id,
                DataDirectory = data,
                Offline = OfflinePolicy.All,
                TelemetryQos = qos,
                Outbox = new OutboxOptions { Sync = OutboxSync.Never, MaxBytes = 1L << 30 },
                ReplayWindow = window,
                Connection = new MqttConnectionOptions { Brokers = [broker], Protocol = protocol },
            }, (_, _) => ValueTask.CompletedTask, NullLoggerFactory.Instance);
            client.Start();
            while (client.Telemetry.Queued > 0)
            {
                await Task.Delay(5);
            }
            var acked = clock.Elapsed.TotalSeconds;
            Console.Error.WriteLine($"QoS {(int)qos}: {client.Connection.Reconnects} reconnects, broker receive maximum {client.Connection.ReceiveMaximum}");
            await all.Task.WaitAsync(TimeSpan.FromMinutes(5));
            var receivedAll = clock.Elapsed.TotalSeconds;
            subscriber?.Close();
            return (acked, receivedAll);
        }
        finally
        {
            Directory.Delete(data, recursive: true);
        }
    }

    static async Task<(Process, string, string)> StartMosquittoAsync(string? maxInflight, bool noDelay)
    {
        var directory = Directory.CreateTempSubdirectory("nightlight-bench-mosquitto-").FullName;
        var port = BenchArgs.FreePort();
        var config = Path.Combine(directory, "mosquitto.conf");
        // Unbounded queues so the subscriber can take a 100,000-message burst; the defaults would drop beyond 1,000.
        await File.WriteAllTextAsync(config, $"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\n" +
            (maxInflight is null ? "" : $"max_inflight_messages {maxInflight}\n") + (noDelay ? "set_tcp_nodelay true\n" : ""));
        var mosquitto = new[] { "/usr/sbin/mosquitto", "/usr/bin/mosquitto" }.FirstOrDefault(File.Exists)
            ?? throw new InvalidOperationException("mosquitto is not installed (Debian package mosquitto); or pass --broker");
        var process = Process.Start(new ProcessStartInfo(mosquitto, ["-c", config]) { RedirectStandardError = true, RedirectStandardOutput = true })!;
        for (var i = 0; i < 100; i++)
        {
            try
            {
                using var tcp = new TcpClient();
                await tcp.ConnectAsync(IPAddress.Loopback, port);
                break;
            }
            catch (SocketException)
            {
                await Task.Delay(50);
            }
        }
        return (process, directory, $"mqtt://127.0.0.1:{port}");
    }
}
