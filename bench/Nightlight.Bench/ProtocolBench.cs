using System.Diagnostics;
using System.Globalization;
using System.Net.Http.Headers;
using System.Text;
using MQTTnet;
using MQTTnet.Formatter;
using MQTTnet.Protocol;
using Nightlight.Protocol;
using Nightlight.Security;

namespace Nightlight.Bench;

/// <summary>
/// The lesson's assignment, MQTT versus HTTP, measured: one device sends a reading and waits for the server's command,
/// over MQTT 3.1.1 with QoS 0, with QoS 1, and over the HTTP device API with one keep-alive connection and with a
/// fresh connection per request. A real <c>nightlight broker</c> and <c>nightlight server</c> run as child processes
/// with device and server identities (so credentials travel as they would); a counting TCP proxy in front of them
/// gives the TCP payload bytes per reading each way. The light alternates across the threshold, so every reading
/// changes the LED and every command is a tracked one (QoS 1 from the server).
/// </summary>
static class ProtocolBench
{
    const string DeviceId = "bench1";

    public static async Task<int> RunAsync(string[] args)
    {
        var readings = IntArg(args, "--readings", 500);
        var warmup = IntArg(args, "--warmup", 50);
        var nightlight = Path.Combine(AppContext.BaseDirectory, "Nightlight.dll");
        var data = Directory.CreateTempSubdirectory("nightlight-protocol-bench-").FullName;
        var identities = DeviceIdentities.InDirectory(data);
        var deviceSecret = identities.Add(DeviceId, IdentityRole.Device);
        var serverSecret = identities.Add("benchserver", IdentityRole.Server);
        var mqttPort = BenchArgs.FreePort();
        var serverHttp = BenchArgs.FreePort();

        Console.WriteLine($"Machine: {Environment.ProcessorCount} cores, {Environment.OSVersion}, .NET {Environment.Version}; load average at start {LoadAverage()}");
        Console.WriteLine($"{readings} readings per transport after {warmup} unmeasured; one device, one reading at a time.");
        Console.WriteLine();
        await using var broker = await Child.StartAsync("broker", nightlight,
            ["broker", "--mqtt-port", Str(mqttPort), "--http-port", Str(BenchArgs.FreePort()), "--data", data], "MQTT broker listening");
        await using var server = await Child.StartAsync("server", nightlight,
            ["server", "--broker", $"mqtt://127.0.0.1:{mqttPort}", "--http-port", Str(serverHttp), "--data", data, "--quiet",
             "--no-status", "--username", "benchserver", "--password", serverSecret], "Server listening");

        var rows = new List<string>
        {
            "| transport | device → server, bytes/reading | server → device, bytes/reading | total | connections | round trip p50 | p90 | p99 | load average after |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        };
        foreach (var qos in new[] { MqttQualityOfServiceLevel.AtMostOnce, MqttQualityOfServiceLevel.AtLeastOnce })
        {
            await using var proxy = new CountingProxy(mqttPort);
            var (times, setup) = await MqttAsync(proxy, qos, deviceSecret, warmup, readings);
            rows.Add(Row($"MQTT 3.1.1 QoS {(int)qos}", proxy, readings, times));
            Console.Error.WriteLine($"MQTT QoS {(int)qos}: connect and subscribe once: {setup.Up} bytes up, {setup.Down} down");
        }
        foreach (var keepAlive in new[] { true, false })
        {
            await using var proxy = new CountingProxy(serverHttp);
            var times = await HttpAsync(proxy, keepAlive, deviceSecret, warmup, readings);
            rows.Add(Row(keepAlive ? "HTTP/1.1, one keep-alive connection" : "HTTP/1.1, a new connection per request", proxy, readings, times));
        }
        foreach (var row in rows)
        {
            Console.WriteLine(row);
        }
        Directory.Delete(data, recursive: true);
        return 0;
    }

    static async Task<(List<double> Times, (long Up, long Down) Setup)> MqttAsync(CountingProxy proxy, MqttQualityOfServiceLevel qos, string secret,
        int warmup, int readings)
    {
        using var client = new MqttClientFactory().CreateMqttClient();
        TaskCompletionSource? answered = null;
        client.ApplicationMessageReceivedAsync += _ =>
        {
            answered?.TrySetResult();
            return Task.CompletedTask;
        };
        await client.ConnectAsync(new MqttClientOptionsBuilder().WithTcpServer("127.0.0.1", proxy.Port).WithClientId(Topics.DeviceClientId(DeviceId))
            .WithCredentials(DeviceId, secret).WithProtocolVersion(MqttProtocolVersion.V311).WithKeepAlivePeriod(TimeSpan.FromMinutes(5)).Build());
        await client.SubscribeAsync(new MqttClientSubscribeOptionsBuilder().WithTopicFilter(Topics.Commands(DeviceId), qos).Build());
        var setup = (proxy.Up, proxy.Down);
        var times = await MeasureAsync(warmup, readings, proxy, async light =>
        {
            answered = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            await client.PublishAsync(new MqttApplicationMessageBuilder().WithTopic(Topics.Telemetry(DeviceId))
                .WithPayload(TelemetryWriter.Write(light)).WithQualityOfServiceLevel(qos).Build());
            await answered.Task.WaitAsync(TimeSpan.FromSeconds(30));
        });
        await client.DisconnectAsync();
        return (times, setup);
    }

    static async Task<List<double>> HttpAsync(CountingProxy proxy, bool keepAlive, string secret, int warmup, int readings)
    {
        var auth = new AuthenticationHeaderValue("Basic", Convert.ToBase64String(Encoding.UTF8.GetBytes($"{DeviceId}:{secret}")));
        var address = new Uri($"http://127.0.0.1:{proxy.Port}/api/devices/{DeviceId}/");
        using var shared = new HttpClient(new SocketsHttpHandler { PooledConnectionLifetime = Timeout.InfiniteTimeSpan }) { BaseAddress = address };
        async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request)
        {
            request.Headers.Authorization = auth;
            if (keepAlive)
            {
                return await shared.SendAsync(request);
            }
            // What a device that opens a connection per request does (requests.post without a Session, a small HTTP stack).
            using var fresh = new HttpClient(new SocketsHttpHandler()) { BaseAddress = address };
            var response = await fresh.SendAsync(request);
            await response.Content.LoadIntoBufferAsync();
            return response;
        }
        return await MeasureAsync(warmup, readings, proxy, async light =>
        {
            using var content = new ByteArrayContent(TelemetryWriter.Write(light));
            content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
            using var posted = await SendAsync(new HttpRequestMessage(HttpMethod.Post, "telemetry") { Content = content });
            if ((int)posted.StatusCode != 202)
            {
                throw new InvalidOperationException($"telemetry refused: {(int)posted.StatusCode} {await posted.Content.ReadAsStringAsync()}");
            }
            using var next = await SendAsync(new HttpRequestMessage(HttpMethod.Get, "commands/next?wait=30s"));
            if ((int)next.StatusCode != 200)
            {
                throw new InvalidOperationException($"no command: {(int)next.StatusCode}");
            }
            await next.Content.ReadAsByteArrayAsync();
        });
    }

    /// <summary>Runs <paramref name="warmup"/> unmeasured round trips, resets the counters, then times <paramref name="readings"/>.</summary>
    static async Task<List<double>> MeasureAsync(int warmup, int readings, CountingProxy proxy, Func<double, Task> roundTrip)
    {
        var times = new List<double>(readings);
        for (var i = 0; i < warmup + readings; i++)
        {
            if (i == warmup)
            {
                // Let the last warm-up acknowledgements pass before counting.
                await Task.Delay(300);
                proxy.Reset();
            }
            // Across the threshold every time: each reading changes the LED.
            var light = i % 2 == 0 ? 100 : 900;
            var clock = Stopwatch.StartNew();
            await roundTrip(light);
            if (i >= warmup)
            {
                times.Add(clock.Elapsed.TotalMilliseconds);
            }
        }
        await Task.Delay(300);
        return times;
    }

    static string Row(string name, CountingProxy proxy, int readings, List<double> times)
    {
        times.Sort();
        double Percentile(double p) => times[Math.Min(times.Count - 1, (int)Math.Ceiling(p * times.Count) - 1)];
        var up = (double)proxy.Up / readings;
        var down = (double)proxy.Down / readings;
        return $"| {name} | {up:0} | {down:0} | {up + down:0} | {proxy.Connections} | {Percentile(0.5):0.00} ms | {Percentile(0.9):0.00} ms | {Percentile(0.99):0.00} ms | {LoadAverage()} |";
    }

    static string LoadAverage() => File.Exists("/proc/loadavg") ? string.Join(' ', File.ReadAllText("/proc/loadavg").Split(' ').Take(3)) : "n/a";

    static int IntArg(string[] args, string name, int fallback)
    {
        return BenchArgs.Option(args, name) is { } value ? int.Parse(value, CultureInfo.InvariantCulture) : fallback;
    }

    static string Str(int value) => value.ToString(CultureInfo.InvariantCulture);

    /// <summary>A <c>nightlight</c> child process, ready once its log says so; stopped with SIGTERM.</summary>
    sealed class Child : IAsyncDisposable
    {
        readonly Process _process;

        Child(Process process) => _process = process;

        public static async Task<Child> StartAsync(string name, string dll, string[] args, string ready)
        {
            var info = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            info.ArgumentList.Add(dll);
            foreach (var arg in args)
            {
                info.ArgumentList.Add(arg);
            }
            info.Environment["NO_COLOR"] = "1";
            var process = Process.Start(info) ?? throw new InvalidOperationException($"could not start {name}");
            var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            var log = new List<string>();
            void Read(string? line)
            {
                if (line is null)
                {
                    return;
                }
                lock (log)
                {
                    log.Add(line);
                }
                if (line.Contains(ready, StringComparison.Ordinal))
                {
                    started.TrySetResult();
                }
            }
            process.OutputDataReceived += (_, e) => Read(e.Data);
            process.ErrorDataReceived += (_, e) => Read(e.Data);
            process.BeginOutputReadLine();
            process.BeginErrorReadLine();
            try
            {
                await started.Task.WaitAsync(TimeSpan.FromSeconds(60));
            }
            catch (TimeoutException)
            {
                process.Kill(entireProcessTree: true);
                lock (log)
                {
                    throw new InvalidOperationException($"{name} did not start:\n{string.Join('\n', log.TakeLast(20))}");
                }
            }
            return new Child(process);
        }

        public async ValueTask DisposeAsync()
        {
            if (!_process.HasExited)
            {
                Process.Start("kill", ["-TERM", _process.Id.ToString(CultureInfo.InvariantCulture)])?.WaitForExit();
                if (!_process.WaitForExit(TimeSpan.FromSeconds(10)))
                {
                    _process.Kill(entireProcessTree: true);
                }
            }
            await Task.CompletedTask;
            _process.Dispose();
        }
    }
}
