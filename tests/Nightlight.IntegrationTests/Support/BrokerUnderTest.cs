using System.Globalization;

namespace Nightlight.Tests.Support;

/// <summary>The brokers the black-box conformance tests run against.</summary>
public enum BrokerKind
{
    /// <summary>Debian's Mosquitto 2.0.11: the reference that validates each test.</summary>
    Mosquitto,

    /// <summary><c>nightlight broker</c>, our own broker, as a user starts it.</summary>
    Nightlight,
}

/// <summary>What a test needs from its broker beyond the defaults.</summary>
public sealed record BrokerSetup
{
    /// <summary>Keeps sessions, queued messages and retained messages in a data directory that outlives the process.</summary>
    public bool Durable { get; init; }

    /// <summary>Device identities (user name = device id) that may use only their own <c>{id}/</c> subtree.</summary>
    public IReadOnlyList<string> Devices { get; init; } = [];

    /// <summary>Server identities (<c>nightlight devices add-server</c>); <c>nightlight broker</c> only.</summary>
    public IReadOnlyList<string> Servers { get; init; } = [];

    /// <summary>The largest packet the broker accepts (Mosquitto <c>max_packet_size</c>, <c>Broker:MaxPacketSize</c>).</summary>
    public int? MaxPacketSize { get; init; }

    /// <summary>The longest keep-alive the broker allows (Mosquitto <c>max_keepalive</c>, <c>Broker:MaxKeepAlive</c>).</summary>
    public int? MaxKeepAlive { get; init; }
}

/// <summary>
/// One broker process for one test, on a free loopback port, that the test can kill -9 and start again on the same port
/// and data directory.
/// </summary>
public sealed class BrokerUnderTest : IAsyncDisposable
{
    readonly TempDirectory _directory;
    readonly Dictionary<string, string> _secrets;
    readonly BrokerSetup _setup;
    ProcessRunner _process;

    BrokerUnderTest(BrokerKind kind, BrokerSetup setup, TempDirectory directory, int port, Dictionary<string, string> secrets, ProcessRunner process)
    {
        Kind = kind;
        _setup = setup;
        _directory = directory;
        Port = port;
        _secrets = secrets;
        _process = process;
    }

    public BrokerKind Kind { get; }

    public int Port { get; }

    public bool IsMosquitto => Kind == BrokerKind.Mosquitto;

    /// <summary>The process as it runs now (its log lines, its pid).</summary>
    public ProcessRunner Process => _process;

    /// <summary>The password of an identity made for <see cref="BrokerSetup.Devices"/> or <see cref="BrokerSetup.Servers"/>.</summary>
    public string Secret(string device) => _secrets[device];

    public static async Task<BrokerUnderTest> StartAsync(BrokerKind kind, BrokerSetup? setup = null)
    {
        setup ??= new BrokerSetup();
        return await Ports.RetryWhenTakenAsync(async () =>
        {
            var directory = new TempDirectory("broker");
            var port = Ports.Free();
            try
            {
                var secrets = kind == BrokerKind.Mosquitto ? await WriteMosquittoConfigAsync(directory.Path, port, setup) : AddIdentities(directory.Path, setup);
                var process = await LaunchAsync(kind, directory.Path, port, setup);
                return new BrokerUnderTest(kind, setup, directory, port, secrets, process);
            }
            catch
            {
                directory.Dispose();
                throw;
            }
        });
    }

    /// <summary>Kills the broker with SIGKILL: nothing it holds in memory only survives, as after a power cut.</summary>
    public async Task KillAsync()
    {
        _process.KillNow();
        Assert.True(await _process.WaitForExitAsync(TimeSpan.FromSeconds(10)), $"broker did not die on SIGKILL: {_process.Describe()}");
        await _process.DisposeAsync();
    }

    /// <summary>Starts the broker again on the same port and data directory.</summary>
    public async Task RestartAsync()
    {
        // The port was ours a moment ago; retry for a little while in case the old socket is still being torn down.
        for (var attempt = 1; ; attempt++)
        {
            try
            {
                _process = await LaunchAsync(Kind, _directory.Path, Port, _setup);
                return;
            }
            catch (PortTakenException) when (attempt < 20)
            {
                await Task.Delay(250);
            }
        }
    }

    static async Task<ProcessRunner> LaunchAsync(BrokerKind kind, string directory, int port, BrokerSetup setup)
    {
        if (kind == BrokerKind.Mosquitto)
        {
            var process = ProcessRunner.Start(External.Require("mosquitto", "mosquitto"), ["-c", Path.Combine(directory, "mosquitto.conf")]);
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
            });
            return process;
        }
        var http = Ports.Free();
        string[] args = ["broker", "--mqtt-port", port.ToString(CultureInfo.InvariantCulture), "--http-port", http.ToString(CultureInfo.InvariantCulture),
            "--data", Path.Combine(directory, "data")];
        if (setup.Devices.Count + setup.Servers.Count > 0)
        {
            // Identities turn anonymous access off; the other clients of a test stay anonymous, as on the Mosquitto side.
            args = [.. args, "--allow-anonymous", "true"];
        }
        var environment = new Dictionary<string, string>();
        if (setup.MaxPacketSize is { } size)
        {
            environment["NIGHTLIGHT_Broker__MaxPacketSize"] = size.ToString(CultureInfo.InvariantCulture);
        }
        if (setup.MaxKeepAlive is { } keepAlive)
        {
            environment["NIGHTLIGHT_Broker__MaxKeepAlive"] = keepAlive.ToString(CultureInfo.InvariantCulture);
        }
        var nightlight = NightlightCli.StartWith(environment, args);
        await nightlight.StopIfNotReadyAsync(async p =>
        {
            try
            {
                // A .NET process starting on a busy 2-core machine (CI runs builds beside the tests) may take this long.
                await p.WaitForErrorLineAsync("MQTT broker listening", TimeSpan.FromSeconds(60));
            }
            catch (Exception) when (p.HasExited && p.StderrLines.Any(l => l.Contains($"port {port} is already in use", StringComparison.Ordinal)))
            {
                throw new PortTakenException($"{p.Name}: port {port} is already in use");
            }
        });
        return nightlight;
    }

    static async Task<Dictionary<string, string>> WriteMosquittoConfigAsync(string directory, int port, BrokerSetup setup)
    {
        var config = new List<string>
        {
            $"listener {port} 127.0.0.1",
            "allow_anonymous true",
            "max_queued_messages 1000",
            "log_dest stderr",
            // Started as root, Mosquitto would drop to its own user, which may not read this test's owner-only directory.
            $"user {Environment.UserName}",
        };
        if (setup.Durable)
        {
            // Saved on every change: Mosquitto writes its whole database then, which is what survives a kill -9.
            config.AddRange(["persistence true", $"persistence_location {directory}/", "autosave_on_changes true", "autosave_interval 1"]);
        }
        else
        {
            config.Add("persistence false");
        }
        if (setup.MaxPacketSize is { } size)
        {
            config.Add($"max_packet_size {size}");
        }
        if (setup.MaxKeepAlive is { } keepAlive)
        {
            config.Add($"max_keepalive {keepAlive}");
        }
        var secrets = new Dictionary<string, string>();
        if (setup.Devices.Count > 0)
        {
            var passwords = Path.Combine(directory, "passwords");
            var acl = new List<string> { "topic readwrite #" };
            foreach (var device in setup.Devices)
            {
                var secret = Convert.ToHexString(System.Security.Cryptography.RandomNumberGenerator.GetBytes(16));
                string[] args = File.Exists(passwords) ? ["-b", passwords, device, secret] : ["-c", "-b", passwords, device, secret];
                var (code, stdout, stderr) = ProcessRunner.Run(External.Require("mosquitto_passwd", "mosquitto"), args, TimeSpan.FromSeconds(20));
                Assert.True(code == 0, $"mosquitto_passwd failed ({code}): {stdout} {stderr}");
                secrets[device] = secret;
                acl.AddRange([$"user {device}", $"topic readwrite {device}/#"]);
            }
            await File.WriteAllLinesAsync(Path.Combine(directory, "acl"), acl);
            config.AddRange([$"password_file {passwords}", $"acl_file {Path.Combine(directory, "acl")}"]);
        }
        await File.WriteAllLinesAsync(Path.Combine(directory, "mosquitto.conf"), config);
        return secrets;
    }

    static Dictionary<string, string> AddIdentities(string directory, BrokerSetup setup)
    {
        var secrets = new Dictionary<string, string>();
        var data = Path.Combine(directory, "data");
        Directory.CreateDirectory(data);
        foreach (var (device, command) in setup.Devices.Select(d => (d, "add")).Concat(setup.Servers.Select(s => (s, "add-server"))))
        {
            var (code, stdout, stderr) = ProcessRunner.Run("dotnet", [NightlightCli.Dll, "devices", command, device, "--data", data], TimeSpan.FromSeconds(30));
            Assert.True(code == 0, $"devices {command} {device} failed ({code}): {stdout} {stderr}");
            secrets[device] = stdout.Split('\n').SkipWhile(l => !l.Contains("shown only this once", StringComparison.Ordinal)).Skip(1)
                .Select(l => l.Trim()).First(l => l.Length > 0);
        }
        return secrets;
    }

    public async ValueTask DisposeAsync()
    {
        await _process.DisposeAsync();
        _directory.Dispose();
    }
}
