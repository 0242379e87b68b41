using System.Diagnostics;
using MQTTnet.Protocol;

namespace Nightlight.Tests.Support;

/// <summary>
/// Two or three RabbitMQ nodes (Debian <c>rabbitmq-server</c>) with the MQTT plugin, joined as one cluster, on loopback: each node
/// has its own name (<c>rabbit-a-ID@localhost</c>, <c>rabbit-b-ID@localhost</c>, ..., ID new for each cluster, so clusters of
/// test runs side by side on one machine never meet in the shared epmd), AMQP, MQTT and Erlang distribution ports and
/// data directory under one temp directory, and all share a fresh Erlang cookie. The other nodes start once node a is up
/// and join it as they boot (classic peer discovery lists a as their peer), so no rabbitmqctl runs.
/// The shared epmd daemon stays; everything else is killed and deleted on dispose.
/// </summary>
public sealed class RabbitCluster : IAsyncDisposable
{
    const string Server = "/usr/lib/rabbitmq/bin/rabbitmq-server";

    readonly TempDirectory _directory;

    RabbitCluster(TempDirectory directory, IReadOnlyList<Node> nodes, TimeSpan startup)
    {
        _directory = directory;
        Nodes = nodes;
        Startup = startup;
    }

    /// <summary>One node: its ports and its process.</summary>
    public sealed class Node
    {
        internal Node(string name, string directory, int amqpPort, int mqttPort, int distributionPort)
        {
            Name = name;
            Directory = directory;
            AmqpPort = amqpPort;
            MqttPort = mqttPort;
            DistributionPort = distributionPort;
        }

        public string Name { get; }
        public string Directory { get; }
        public int AmqpPort { get; }
        public int MqttPort { get; }
        public int DistributionPort { get; }
        internal ProcessRunner? Process { get; set; }
        internal Dictionary<string, string> Environment { get; set; } = [];

        internal void Start() => Process = ProcessRunner.Start(Server, [], Environment, Directory);

        /// <summary>
        /// Starts again with an empty database: a node that joined its seed while the seed was still writing its first
        /// schema fails its boot (schema_integrity_check_failed); once the seed is up, joining works.
        /// </summary>
        internal async Task RestartAfterFailedJoinAsync()
        {
            await Process!.DisposeAsync();
            System.IO.Directory.Delete(Path.Combine(Directory, "mnesia"), recursive: true);
            File.Delete(Path.Combine(Directory, "pid"));
            Start();
        }

        public string MqttUrl => $"mqtt://127.0.0.1:{MqttPort}";
        public string AmqpUrl => $"amqp://guest:guest@127.0.0.1:{AmqpPort}/";

        /// <summary>The Erlang VM's process id (the pid file RabbitMQ writes), not the start script's.</summary>
        public int BeamPid => int.Parse(File.ReadAllText(Path.Combine(Directory, "pid")).Trim(), System.Globalization.CultureInfo.InvariantCulture);

        /// <summary>The node's own log, for failure messages.</summary>
        public string LogTail()
        {
            var log = Path.Combine(Directory, "log", Name + ".log");
            return File.Exists(log) ? string.Join('\n', File.ReadLines(log).TakeLast(30)) : "(no log)";
        }
    }

    public IReadOnlyList<Node> Nodes { get; }

    /// <summary>How long the two nodes took to boot and join (reported by the tests; CI time matters).</summary>
    public TimeSpan Startup { get; }

    /// <summary>Both nodes' MQTT listeners, for a device or server that fails over: <c>mqtt://a,mqtt://b</c>.</summary>
    public string MqttUrls => string.Join(',', Nodes.Select(n => n.MqttUrl));

    /// <summary>Both nodes' AMQP listeners.</summary>
    public string AmqpUrls => string.Join(',', Nodes.Select(n => n.AmqpUrl));

    /// <summary>
    /// Starts the nodes (two, or three for quorum queues, which need a majority left when one goes), and starts them
    /// again on new ports if a node found one of its ports taken.
    /// </summary>
    public static Task<RabbitCluster> StartAsync(int nodeCount = 2)
    {
        External.Require(Server, "rabbitmq-server");
        return Ports.RetryWhenTakenAsync(() => StartOnceAsync(nodeCount));
    }

    static async Task<RabbitCluster> StartOnceAsync(int nodeCount)
    {
        var clock = Stopwatch.StartNew();
        var directory = new TempDirectory("rabbit");
        var cookie = Guid.NewGuid().ToString("N");
        var id = Guid.NewGuid().ToString("N")[..8];
        var seed = $"rabbit-a-{id}@localhost";
        var nodes = new List<Node>();
        var cluster = new RabbitCluster(directory, nodes, TimeSpan.Zero);
        try
        {
            foreach (var letter in new[] { "a", "b", "c" }.Take(nodeCount))
            {
                var node = new Node($"rabbit-{letter}-{id}@localhost", Path.Combine(directory.Path, letter), Ports.Free(), Ports.Free(), Ports.Free());
                System.IO.Directory.CreateDirectory(node.Directory);
                var config = $"""
                    listeners.tcp.1 = 127.0.0.1:{node.AmqpPort}
                    mqtt.listeners.tcp.1 = 127.0.0.1:{node.MqttPort}
                    mqtt.allow_anonymous = true
                    loopback_users = none
                    log.console = false
                    log.file.level = info

                    """;
                if (node.Name != seed)
                {
                    // Boots beside the seed and joins it as soon as it answers (the seed needs about as long to boot).
                    config += $"""
                        cluster_formation.peer_discovery_backend = classic_config
                        cluster_formation.classic_config.nodes.1 = {seed}
                        cluster_formation.discovery_retry_limit = 240
                        cluster_formation.discovery_retry_interval = 500

                        """;
                }
                await File.WriteAllTextAsync(Path.Combine(node.Directory, "rabbitmq.conf"), config);
                await File.WriteAllTextAsync(Path.Combine(node.Directory, "enabled_plugins"), "[rabbitmq_mqtt].\n");
                node.Environment = new Dictionary<string, string>
                {
                    ["HOME"] = node.Directory,
                    ["RABBITMQ_NODENAME"] = node.Name,
                    ["RABBITMQ_NODE_IP_ADDRESS"] = "127.0.0.1",
                    ["RABBITMQ_NODE_PORT"] = node.AmqpPort.ToString(System.Globalization.CultureInfo.InvariantCulture),
                    ["RABBITMQ_DIST_PORT"] = node.DistributionPort.ToString(System.Globalization.CultureInfo.InvariantCulture),
                    ["RABBITMQ_CONFIG_FILE"] = Path.Combine(node.Directory, "rabbitmq.conf"),
                    ["RABBITMQ_ENABLED_PLUGINS_FILE"] = Path.Combine(node.Directory, "enabled_plugins"),
                    ["RABBITMQ_MNESIA_BASE"] = Path.Combine(node.Directory, "mnesia"),
                    ["RABBITMQ_LOG_BASE"] = Path.Combine(node.Directory, "log"),
                    ["RABBITMQ_PID_FILE"] = Path.Combine(node.Directory, "pid"),
                    // Erlang distribution on loopback only, with this cluster's own cookie.
                    ["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"] = $"-setcookie {cookie} -kernel inet_dist_use_interface {{127,0,0,1}}",
                    ["ERL_EPMD_ADDRESS"] = "127.0.0.1",
                };
                node.Start();
                nodes.Add(node);
                if (node.Name == seed)
                {
                    // Under heavy load a node that joins a seed still in its first boot can break both (schema and
                    // feature-flag errors): the second node starts once the seed is up.
                    await WaitOpenAsync(node, TimeSpan.FromSeconds(120));
                }
            }
            await WaitOpenAsync(nodes[0], TimeSpan.FromSeconds(120));
            foreach (var joining in nodes.Skip(1))
            {
                for (var attempt = 1; ; attempt++)
                {
                    try
                    {
                        await WaitOpenAsync(joining, TimeSpan.FromSeconds(120));
                        break;
                    }
                    catch (InvalidOperationException) when (attempt < 3 && joining.Process!.HasExited)
                    {
                        await joining.RestartAfterFailedJoinAsync();
                    }
                }
            }
            // Joined, not clusters of one: a message published on each other node reaches a subscriber on a.
            await using var onA = await MqttProbe.ConnectAsync(nodes[0].MqttPort);
            await onA.SubscribeAsync("cluster/check", MqttQualityOfServiceLevel.AtLeastOnce);
            foreach (var other in nodes.Skip(1))
            {
                await using var onOther = await MqttProbe.ConnectAsync(other.MqttPort);
                await onOther.PublishAsync("cluster/check", other.Name, MqttQualityOfServiceLevel.AtLeastOnce);
            }
            await onA.WaitForAsync(m => m.Topic == "cluster/check", nodes.Count - 1, TimeSpan.FromSeconds(20));
        }
        catch (Exception e)
        {
            var logs = string.Join("\n", nodes.Select(n => $"--- {n.Name} ---\n{n.LogTail()}"));
            await cluster.DisposeAsync();
            var message = $"RabbitMQ cluster did not start: {e.Message}\n{logs}";
            // A listener's or the Erlang distribution's port taken between Ports.Free and the node's boot.
            if (message.Contains("eaddrinuse", StringComparison.OrdinalIgnoreCase))
            {
                throw new PortTakenException(message);
            }
            throw new InvalidOperationException(message, e);
        }
        return new RabbitCluster(directory, nodes, clock.Elapsed);
    }

    static async Task WaitOpenAsync(Node node, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        // MQTT opens last, after the plugins: the node is ready then.
        while (true)
        {
            if (node.Process!.HasExited)
            {
                throw new InvalidOperationException($"{node.Name} exited: {node.Process.Describe()}");
            }
            try
            {
                await Ports.WaitOpenAsync(node.MqttPort, TimeSpan.FromSeconds(1));
                return;
            }
            catch (System.Net.Sockets.SocketException) when (DateTime.UtcNow < deadline)
            {
            }
        }
    }

    /// <summary>Kills a node's Erlang VM with SIGKILL: no goodbye to clients or to the other node.</summary>
    public void Kill(Node node)
    {
        using var kill = System.Diagnostics.Process.Start("kill", ["-9", node.BeamPid.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
        kill.WaitForExit();
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var node in Nodes)
        {
            if (File.Exists(Path.Combine(node.Directory, "pid")))
            {
                try
                {
                    using var process = System.Diagnostics.Process.GetProcessById(node.BeamPid);
                    process.Kill(entireProcessTree: true);
                    await process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(10));
                }
                catch (Exception e) when (e is ArgumentException or InvalidOperationException or FormatException)
                {
                    // Already gone (killed by the test).
                }
            }
            if (node.Process is { } script)
            {
                await script.DisposeAsync();
            }
        }
        _directory.Dispose();
    }
}
