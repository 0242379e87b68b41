namespace Nightlight.Tests.Support;

/// <summary>Starts the real <c>nightlight</c> command (the built Nightlight.dll) as a child process.</summary>
public static class NightlightCli
{
    public static string Dll => Path.Combine(AppContext.BaseDirectory, "Nightlight.dll");

    /// <summary>
    /// Starts <c>nightlight</c>. Each process gets its own data directory and, unless a flag says otherwise, a free
    /// HTTP port, so tests that run in parallel never share a database file or a port.
    /// </summary>
    public static ProcessRunner Start(params string[] args) => StartWith(new Dictionary<string, string>(), args);

    /// <summary><see cref="Start"/> with extra environment variables (settings that have no flag).</summary>
    public static ProcessRunner StartWith(IDictionary<string, string> environment, params string[] args)
    {
        var data = new TempDirectory("data");
        var variables = new Dictionary<string, string>
        {
            ["NO_COLOR"] = "1",
            ["NIGHTLIGHT_Http__Port"] = "0",
            ["NIGHTLIGHT_Data__Directory"] = data.Path,
        };
        foreach (var (name, value) in environment)
        {
            variables[name] = value;
        }
        var process = ProcessRunner.Start("dotnet", [Dll, .. args], variables);
        process.DeleteOnDispose(data);
        return process;
    }

    /// <summary><c>nightlight broker</c> on free ports; returns once it accepts MQTT connections.</summary>
    public static Task<(ProcessRunner Process, int MqttPort, int HttpPort)> StartBrokerAsync(params string[] extra) =>
        StartBrokerWithAsync(new Dictionary<string, string>(), extra);

    /// <summary><see cref="StartBrokerAsync"/> with extra environment variables.</summary>
    public static Task<(ProcessRunner Process, int MqttPort, int HttpPort)> StartBrokerWithAsync(IDictionary<string, string> environment, params string[] extra) =>
        Ports.RetryWhenTakenAsync(async () =>
        {
            var mqtt = Ports.Free();
            var http = Ports.Free();
            var process = StartWith(environment, ["broker", "--mqtt-port", mqtt.ToString(), "--http-port", http.ToString(), .. extra]);
            await process.StopIfNotReadyAsync(async p =>
            {
                try
                {
                    await p.WaitForErrorLineAsync("MQTT broker listening", TimeSpan.FromSeconds(30));
                }
                catch (Exception) when (SaidTaken(p, mqtt, http) is { } line)
                {
                    throw new PortTakenException($"{p.Name}: {line}");
                }
            });
            return (process, mqtt, http);
        });

    /// <summary>The CLI's "error: port N is already in use" line when it stopped on it and N is one of <paramref name="ports"/>.</summary>
    static string? SaidTaken(ProcessRunner process, params int[] ports) =>
        process.HasExited
            ? process.StderrLines.FirstOrDefault(line => ports.Any(port => line.StartsWith($"error: port {port} is already in use", StringComparison.Ordinal)))
            : null;
}

/// <summary>A Mosquitto broker (Debian <c>mosquitto</c>) on a free loopback port, with only the configuration a test needs.</summary>
public sealed class MosquittoBroker : IAsyncDisposable
{
    ProcessRunner _process;
    readonly TempDirectory _directory;

    MosquittoBroker(ProcessRunner process, TempDirectory directory, int port)
    {
        _process = process;
        _directory = directory;
        Port = port;
    }

    /// <summary>Kills the broker with -9, as a crash would: it keeps nothing (no persistence) for <see cref="RestartAsync"/>.</summary>
    public async Task KillAsync()
    {
        _process.Signal("KILL");
        Assert.True(await _process.WaitForExitAsync(TimeSpan.FromSeconds(30)), "mosquitto did not die on kill -9");
    }

    /// <summary>Starts the broker <see cref="KillAsync"/> killed again, with the same configuration on the same port.</summary>
    public async Task RestartAsync()
    {
        await _process.DisposeAsync();
        _process = ProcessRunner.Start(External.Require("mosquitto", "mosquitto"), ["-c", Path.Combine(_directory.Path, "mosquitto.conf")]);
        await _process.WaitForErrorLineAsync(" running", TimeSpan.FromSeconds(30));
    }

    public int Port { get; }

    public string Url => $"mqtt://127.0.0.1:{Port}";

    public static Task<MosquittoBroker> StartAsync(string extraConfig = "") => Ports.RetryWhenTakenAsync(async () =>
    {
        var mosquitto = External.Require("mosquitto", "mosquitto");
        var directory = new TempDirectory("mosquitto");
        var port = Ports.Free();
        var config = Path.Combine(directory.Path, "mosquitto.conf");
        await File.WriteAllTextAsync(config, $"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\n{extraConfig}\n");
        var process = ProcessRunner.Start(mosquitto, ["-c", config]);
        // Its own "running" line, logged once its listener is open: a port that merely accepts could be another program's.
        await process.StopIfNotReadyAsync(async p =>
        {
            try
            {
                await p.WaitForErrorLineAsync(" running", TimeSpan.FromSeconds(10));
            }
            catch (Exception) when (p.HasExited && p.Stderr.Contains("Address already in use", StringComparison.Ordinal))
            {
                throw new PortTakenException($"{p.Name}: port {port} is already in use");
            }
        }, directory);
        return new MosquittoBroker(process, directory, port);
    });

    public async ValueTask DisposeAsync()
    {
        await _process.DisposeAsync();
        _directory.Dispose();
    }
}

/// <summary>A data directory in /tmp with identities made by the real <c>nightlight devices</c> command.</summary>
public sealed class DataDir : IDisposable
{
    readonly TempDirectory _directory = new("data");

    public string Path => _directory.Path;

    /// <summary>Runs <c>nightlight devices ARGS --data DIR</c>.</summary>
    public (int ExitCode, string Stdout, string Stderr) Devices(params string[] args) =>
        ProcessRunner.Run("dotnet", [NightlightCli.Dll, "devices", .. args, "--data", Path], TimeSpan.FromSeconds(30));

    /// <summary>Adds a device (or with <c>add-server</c>, a server) and returns the secret it printed once.</summary>
    public string Add(string id, string command = "add")
    {
        var (code, stdout, stderr) = Devices(command, id);
        Assert.True(code == 0, $"devices {command} {id} failed ({code}): {stdout} {stderr}");
        return SecretIn(stdout);
    }

    public string Rotate(string id)
    {
        var (code, stdout, stderr) = Devices("rotate", id);
        Assert.True(code == 0, $"devices rotate {id} failed ({code}): {stdout} {stderr}");
        return SecretIn(stdout);
    }

    // The secret is the one indented line after "shown only this once".
    static string SecretIn(string stdout) =>
        stdout.Split('\n').SkipWhile(l => !l.Contains("shown only this once", StringComparison.Ordinal)).Skip(1)
            .Select(l => l.Trim()).First(l => l.Length > 0);

    public void Dispose() => _directory.Dispose();
}
