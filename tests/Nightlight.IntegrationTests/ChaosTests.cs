using System.Globalization;
using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>
/// Issue 28's fault table, row by row: devices with <c>--offline all</c> (a <c>nightlight device</c> and a
/// <c>nightlight fleet</c> of three) run through a real broker into a real server and store while one part is killed
/// with -9 or starved, and every reading they numbered (read back from their own seq files) must be stored exactly once.
/// Each row prints its line of the table: fault | readings sent | stored | lost | duplicates.
/// A garbled outbox record is the one row where a loss is expected: exactly the damaged reading.
/// Rows covered elsewhere, end to end and counted the same way: a garbled seq file
/// (<see cref="EpochTests.A_device_with_a_garbled_telemetry_seq_starts_a_new_epoch_and_its_new_readings_are_stored"/>), a
/// database file that cannot be opened (<see cref="StoreOutageTests.A_database_file_that_cannot_be_opened_stops_the_server_with_one_line_naming_it"/>),
/// the HTTP device and a fleet across a server kill (<see cref="StoredAckTests"/>).
/// </summary>
[Trait("Speed", "Slow")]
public class ChaosTests
{
    internal static readonly TimeSpan Wait = TimeSpan.FromSeconds(60);

    /// <summary>The broker, the server and the devices of one row, on fixed ports so each can be killed and started again.</summary>
    internal sealed class Rig : IAsyncDisposable
    {
        readonly List<IAsyncDisposable> _owned = [];
        string[] _serverArgs = [];
        ProcessRunner? _ourBroker;
        string[] _ourBrokerArgs = [];

        public MosquittoBroker? Mosquitto { get; private set; }
        public string BrokerUrl { get; private set; } = "";
        public ProcessRunner Server { get; private set; } = null!;
        public ProcessRunner? Device { get; private set; }
        public ProcessRunner? Fleet { get; private set; }
        public TempDirectory ServerData { get; } = new("chaos-server");
        public TempDirectory DeviceData { get; } = new("chaos-devices");
        public int HttpPort { get; } = Ports.Free();
        public HttpClient Http { get; }

        public static readonly string[] FleetIds = ["chaosf00001", "chaosf00002", "chaosf00003"];
        public const string DeviceId = "chaosd1";

        public Rig()
        {
            Http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{HttpPort}"), Timeout = Wait };
        }

        public async Task StartMosquittoAsync()
        {
            Mosquitto = await MosquittoBroker.StartAsync();
            BrokerUrl = Mosquitto.Url;
        }

        /// <summary><c>nightlight broker</c> on fixed ports with its own data directory, so a restart is the same broker.</summary>
        public async Task StartOurBrokerAsync()
        {
            var (mqtt, http) = (Ports.Free(), Ports.Free());
            var data = new TempDirectory("chaos-broker");
            _ourBrokerArgs = ["broker", "--mqtt-port", mqtt.ToString(CultureInfo.InvariantCulture), "--http-port", http.ToString(CultureInfo.InvariantCulture), "--data", data.Path];
            BrokerUrl = $"mqtt://127.0.0.1:{mqtt}";
            await RestartOurBrokerAsync();
            _owned.Add(new Owned(() => { data.Dispose(); return ValueTask.CompletedTask; }));
        }

        public async Task KillOurBrokerAsync()
        {
            _ourBroker!.Signal("KILL");
            Assert.True(await _ourBroker.WaitForExitAsync(Wait), "nightlight broker did not die on kill -9");
        }

        public async Task RestartOurBrokerAsync()
        {
            if (_ourBroker is not null)
            {
                await _ourBroker.DisposeAsync();
            }
            _ourBroker = NightlightCli.Start(_ourBrokerArgs);
            await _ourBroker.WaitForErrorLineAsync("MQTT broker listening", Wait);
        }

        /// <summary>Settings without a flag for the server (its environment), set before <see cref="StartServerAsync"/>.</summary>
        public Dictionary<string, string> ServerEnvironment { get; } = [];

        /// <summary>Points devices and server at brokers this rig did not start (a RabbitMQ cluster's MQTT listeners).</summary>
        public void UseBroker(string url) => BrokerUrl = url;

        /// <summary>Starts <c>nightlight server</c> with its SQLite store in <paramref name="data"/> (default: a directory of its own).</summary>
        public async Task StartServerAsync(string? data = null, params string[] extra)
        {
            _serverArgs = ["server", "--broker", BrokerUrl, "--http-port", HttpPort.ToString(CultureInfo.InvariantCulture), "--data", data ?? ServerData.Path, "--quiet", .. extra];
            await RestartServerAsync();
        }

        public async Task KillServerAsync()
        {
            Server.Signal("KILL");
            Assert.True(await Server.WaitForExitAsync(Wait), "the server did not die on kill -9");
        }

        public async Task RestartServerAsync()
        {
            if (Server is not null)
            {
                await Server.DisposeAsync();
            }
            Server = NightlightCli.StartWith(ServerEnvironment, _serverArgs);
            await Server.WaitForErrorLineAsync("Server listening", Wait);
        }

        /// <summary>A <c>nightlight device</c> and a fleet of three, all <c>--offline all</c>, 10 readings a second each.</summary>
        public async Task StartDevicesAsync()
        {
            Device = NightlightCli.Start("device", "--broker", BrokerUrl, "--id", DeviceId, "--offline", "all", "--qos", "1", "--data", DeviceData.Path,
                "--interval", "100ms", "--light", "500");
            Fleet = NightlightCli.Start("fleet", "--broker", BrokerUrl, "--devices", "3", "--id-prefix", "chaosf", "--interval", "100ms", "--offline", "all",
                "--data", DeviceData.Path, "--light", "500");
            await WaitStoredAsync(20);
            // The devices keep each reading until the store has it only once they heard the first stored acknowledgement.
            await Device.WaitForErrorLineAsync("the server acknowledges stored readings", Wait);
            await Task.Delay(500);
        }

        /// <summary>Waits until every device has at least <paramref name="count"/> more readings stored than now.</summary>
        public async Task WaitStoredAsync(int count)
        {
            var ids = FleetIds.Append(DeviceId).ToList();
            var before = new Dictionary<string, int>();
            foreach (var id in ids)
            {
                before[id] = (await StoredAsync(id)).Count;
            }
            var deadline = DateTime.UtcNow + Wait;
            foreach (var id in ids)
            {
                while ((await StoredAsync(id)).Count < before[id] + count)
                {
                    Assert.True(DateTime.UtcNow < deadline, $"{id}: fewer than {count} more readings stored\n{Server.Describe()}\n{Fleet?.Describe()}\n{Device?.Describe()}");
                    await Task.Delay(100);
                }
            }
        }

        /// <summary>The device's stored readings; when the server does not answer, the failure carries its output.</summary>
        async Task<List<(long Epoch, long Seq)>> StoredAsync(string id)
        {
            try
            {
                return await ReadingLedger.StoredAsync(Http, id);
            }
            catch (HttpRequestException e)
            {
                throw new InvalidOperationException($"the server's HTTP API did not answer for {id}: {e.Message}\n{Server.Describe()}", e);
            }
        }

        /// <summary>
        /// Waits until no device has a reading <c>missing</c> (GET /api/devices/{id}): readings lost on the way were sent
        /// again and stored, which takes the devices' resend after 10 s without stored progress.
        /// </summary>
        public async Task WaitNothingMissingAsync()
        {
            var deadline = DateTime.UtcNow + Wait + Wait;
            foreach (var id in FleetIds.Append(DeviceId))
            {
                long missing;
                while ((missing = (await Http.GetFromJsonAsync<JsonElement>($"/api/devices/{id}")).GetProperty("missing").GetInt64()) > 0)
                {
                    Assert.True(DateTime.UtcNow < deadline,
                        $"{id}: {missing} readings still missing\n{Server.Describe()}\n--- device ---\n{Device!.Describe()}\n--- fleet ---\n{Fleet!.Describe()}");
                    await Task.Delay(250);
                }
            }
        }

        /// <summary>
        /// Once no reading is missing, stops the devices as Ctrl+C does (each gives its kept readings a moment to be stored),
        /// then counts.
        /// </summary>
        public async Task<Tally> StopAndTallyAsync(string fault, long atLeast = 200)
        {
            // Readings a broker or queue dropped on the way come again only after 10 s without a stored acknowledgement
            // for them: stopping sooner would leave them in the outboxes, kept for the next start but not stored yet.
            await WaitNothingMissingAsync();
            Device!.Signal("INT");
            Fleet!.Signal("INT");
            Assert.True(await Device.WaitForExitAsync(Wait), Device.Describe());
            Assert.True(await Fleet.WaitForExitAsync(Wait), Fleet.Describe());
            var tally = await ReadingLedger.TallyAsync(fault, Http, ReadingLedger.TakenUnder(DeviceData.Path, FleetIds.Append(DeviceId)), TimeSpan.FromSeconds(30));
            ReadingLedger.AssertExactlyOnce(tally, atLeast);
            return tally;
        }

        public void Own(IAsyncDisposable disposable) => _owned.Add(disposable);

        public async ValueTask DisposeAsync()
        {
            Http.Dispose();
            foreach (var process in new[] { Device, Fleet, Server, _ourBroker })
            {
                if (process is not null)
                {
                    await process.DisposeAsync();
                }
            }
            if (Mosquitto is not null)
            {
                await Mosquitto.DisposeAsync();
            }
            foreach (var owned in Enumerable.Reverse(_owned))
            {
                await owned.DisposeAsync();
            }
            ServerData.Dispose();
            DeviceData.Dispose();
        }

        sealed class Owned(Func<ValueTask> dispose) : IAsyncDisposable
        {
            public ValueTask DisposeAsync() => dispose();
        }
    }

    [Fact]
    public async Task Server_killed_with_9_and_back_after_15_s_on_Mosquitto()
    {
        await using var rig = new Rig();
        await rig.StartMosquittoAsync();
        await rig.StartServerAsync();
        await rig.StartDevicesAsync();

        await rig.KillServerAsync();
        await Task.Delay(TimeSpan.FromSeconds(15));
        await rig.RestartServerAsync();
        await rig.WaitStoredAsync(20);

        await rig.StopAndTallyAsync("`nightlight server` kill -9, back after 15 s (Mosquitto)", atLeast: 600);
    }

    [Fact]
    public async Task Server_killed_with_9_and_restarted_at_once_three_times()
    {
        await using var rig = new Rig();
        await rig.StartMosquittoAsync();
        await rig.StartServerAsync();
        await rig.StartDevicesAsync();

        for (var kill = 0; kill < 3; kill++)
        {
            await rig.KillServerAsync();
            await rig.RestartServerAsync();
            await rig.WaitStoredAsync(10);
        }

        await rig.StopAndTallyAsync("server kill -9 and restart at once, three times (Mosquitto)");
    }

    [Fact]
    public async Task Mosquitto_killed_with_9_for_10_s()
    {
        await using var rig = new Rig();
        await rig.StartMosquittoAsync();
        await rig.StartServerAsync();
        await rig.StartDevicesAsync();

        // Mosquitto runs without persistence: the server's session and every queued message die with it, so what the
        // devices sent and the store had not confirmed must come again from their outboxes.
        await rig.Mosquitto!.KillAsync();
        await Task.Delay(TimeSpan.FromSeconds(10));
        await rig.Mosquitto.RestartAsync();
        await rig.WaitStoredAsync(20);

        await rig.StopAndTallyAsync("Mosquitto kill -9 for 10 s (no persistence)", atLeast: 400);
    }

    [Fact]
    public async Task Nightlight_broker_killed_with_9_for_10_s()
    {
        await using var rig = new Rig();
        await rig.StartOurBrokerAsync();
        await rig.StartServerAsync();
        await rig.StartDevicesAsync();

        await rig.KillOurBrokerAsync();
        await Task.Delay(TimeSpan.FromSeconds(10));
        await rig.RestartOurBrokerAsync();
        await rig.WaitStoredAsync(20);

        await rig.StopAndTallyAsync("`nightlight broker` kill -9 for 10 s", atLeast: 400);
    }

    [Fact]
    public async Task Server_and_Mosquitto_killed_with_9_together()
    {
        await using var rig = new Rig();
        await rig.StartMosquittoAsync();
        await rig.StartServerAsync();
        await rig.StartDevicesAsync();

        await rig.KillServerAsync();
        await rig.Mosquitto!.KillAsync();
        await Task.Delay(TimeSpan.FromSeconds(5));
        await rig.Mosquitto.RestartAsync();
        await rig.RestartServerAsync();
        await rig.WaitStoredAsync(20);

        await rig.StopAndTallyAsync("server and Mosquitto kill -9 together, back after 5 s", atLeast: 300);
    }

    [Fact]
    public async Task A_fleet_run_twice_numbering_from_1_each_time()
    {
        await using var rig = new Rig();
        await rig.StartMosquittoAsync();
        await rig.StartServerAsync();
        var taken = new Dictionary<string, List<(long Epoch, long Seq)>>();
        for (var run = 0; run < 2; run++)
        {
            // A data directory of its own each time: seq starts again at 1, in a new epoch.
            using var data = new TempDirectory("chaos-fleet-run");
            await using var fleet = NightlightCli.Start("fleet", "--broker", rig.BrokerUrl, "--devices", "3", "--id-prefix", "twice", "--interval", "100ms",
                "--duration", "4s", "--offline", "all", "--data", data.Path);
            Assert.True(await fleet.WaitForExitAsync(Wait), fleet.Describe());
            foreach (var (id, readings) in ReadingLedger.TakenUnder(data.Path, ["twice00001", "twice00002", "twice00003"]))
            {
                taken[id] = [.. taken.GetValueOrDefault(id, []), .. readings];
            }
        }
        Assert.All(taken.Values, readings => Assert.Equal(2, readings.Select(r => r.Epoch).Distinct().Count()));
        ReadingLedger.AssertExactlyOnce(await ReadingLedger.TallyAsync("`nightlight fleet` run twice, seq from 1 each time", rig.Http, taken, TimeSpan.FromSeconds(30)), atLeast: 150);
    }

    [Fact]
    public async Task A_garbled_outbox_record_loses_that_reading_only()
    {
        await using var rig = new ChaosTests.Rig();
        await rig.StartMosquittoAsync();
        await rig.StartServerAsync();
        string[] args = ["device", "--broker", rig.BrokerUrl, "--id", "garbled1", "--offline", "all", "--qos", "1", "--data", rig.DeviceData.Path,
            "--interval", "50ms", "--light", "500"];
        long backlogEnd;
        await using (var first = NightlightCli.Start(args))
        {
            // The device learns that the server acknowledges stored readings, and remembers it in its data directory.
            await first.WaitForErrorLineAsync("the server acknowledges stored readings", Wait);
            // Then the broker goes away while the device takes readings: they wait in its outbox on disk.
            await rig.Mosquitto!.KillAsync();
            var sentBefore = first.StdoutLines.Count(l => l.Contains("Sending telemetry", StringComparison.Ordinal));
            await first.WaitForCountAsync(l => l.Contains("Sending telemetry", StringComparison.Ordinal), sentBefore + 60, "60 readings offline", Wait);
            first.Signal("KILL");
            Assert.True(await first.WaitForExitAsync(Wait), first.Describe());
            backlogEnd = ReadingLedger.Taken(Path.Combine(rig.DeviceData.Path, "devices", "garbled1")).Taken;
        }
        // One flipped byte inside a record well inside the backlog (40 before its end).
        var damaged = backlogEnd - 40;
        var marker = Encoding.UTF8.GetBytes($"\"seq\": {damaged},");
        var segment = Directory.GetFiles(Path.Combine(rig.DeviceData.Path, "devices", "garbled1", "outbox"), "*.seg")
            .Single(f => File.ReadAllBytes(f).AsSpan().IndexOf(marker) >= 0);
        var bytes = await File.ReadAllBytesAsync(segment);
        var at = bytes.AsSpan().IndexOf(marker);
        bytes[at + 8] ^= 0x01;
        await File.WriteAllBytesAsync(segment, bytes);

        // The broker comes back without the server's session (it keeps none on disk) and the server comes back last: the
        // backlog the device replays meanwhile is accepted by the broker and dropped, as nobody subscribes. The device
        // must send it again once the server is back, not forget it on the broker's word.
        await rig.KillServerAsync();
        await rig.Mosquitto.RestartAsync();
        await using var watcher = await MqttProbe.ConnectAsync(rig.Mosquitto.Port);
        await watcher.SubscribeAsync("garbled1/telemetry");
        await using var second = NightlightCli.Start(args);
        await second.WaitForErrorLineAsync("skipped 1 damaged readings", Wait);
        await second.WaitForErrorLineAsync("acknowledged stored readings before", Wait);
        await watcher.WaitForAsync(m => m.Payload.Contains($"\"seq\": {backlogEnd},", StringComparison.Ordinal), timeout: Wait);
        await rig.RestartServerAsync();
        var epoch = ReadingLedger.Taken(Path.Combine(rig.DeviceData.Path, "devices", "garbled1")).Epoch;
        var deadline = DateTime.UtcNow + Wait;
        // Until the backlog is stored, all but the damaged reading, and the device has sent some new readings too.
        while (await ReadingLedger.StoredAsync(rig.Http, "garbled1") is var stored &&
            (stored.Count(r => r.Epoch == epoch && r.Seq <= backlogEnd) < backlogEnd - 1 || stored.Count < backlogEnd + 20))
        {
            Assert.True(DateTime.UtcNow < deadline,
                $"backlog seq 1..{backlogEnd} (but {damaged}): {stored.Count(r => r.Epoch == epoch && r.Seq <= backlogEnd)} stored\n{second.Describe()}");
            await Task.Delay(200);
        }
        second.Signal("INT");
        Assert.True(await second.WaitForExitAsync(Wait), second.Describe());

        var tally = await ReadingLedger.TallyAsync("garbled outbox record (a reading 40 before the backlog's end)", rig.Http,
            ReadingLedger.TakenUnder(rig.DeviceData.Path, ["garbled1"]), TimeSpan.FromSeconds(10));
        Assert.Equal(1, tally.Lost);
        Assert.Equal(0, tally.Duplicates);
        Assert.DoesNotContain((epoch, damaged), await ReadingLedger.StoredAsync(rig.Http, "garbled1"));
    }
}

/// <summary>The store's rows of the fault table (see <see cref="ChaosTests"/>): a class of their own, so they run beside the broker rows.</summary>
[Trait("Speed", "Slow")]
public class ChaosStoreTests
{
    [Fact]
    public async Task PostgreSQL_stopped_for_20_s()
    {
        await using var postgres = await PostgresServer.StartAsync();
        var database = await postgres.CreateDatabaseAsync();
        await using var rig = new ChaosTests.Rig();
        await rig.StartMosquittoAsync();
        await rig.StartServerAsync(null, "--database", database);
        await rig.StartDevicesAsync();

        postgres.Stop();
        await Task.Delay(TimeSpan.FromSeconds(20));
        Assert.Equal(HttpStatusCode.ServiceUnavailable, (await rig.Http.GetAsync("/readyz")).StatusCode);
        postgres.Restart();
        await rig.WaitStoredAsync(20);

        await rig.StopAndTallyAsync("PostgreSQL stopped for 20 s", atLeast: 800);
    }

    [Fact]
    public async Task SQLite_on_a_full_tmpfs_then_space_freed()
    {
        await using var rig = new ChaosTests.Rig();
        using var disk = new SmallDisk(kibibytes: 8192);
        await rig.StartMosquittoAsync();
        await rig.StartServerAsync(disk.Path);
        await rig.StartDevicesAsync();

        disk.Fill();
        var deadline = DateTime.UtcNow + ChaosTests.Wait;
        while ((await rig.Http.GetAsync("/readyz")).StatusCode != HttpStatusCode.ServiceUnavailable)
        {
            Assert.True(DateTime.UtcNow < deadline, "/readyz stayed healthy on a full disk\n" + rig.Server.Describe());
            await Task.Delay(200);
        }
        await Task.Delay(TimeSpan.FromSeconds(5));
        disk.Free();
        await rig.WaitStoredAsync(20);

        await rig.StopAndTallyAsync("SQLite on a full tmpfs, space freed", atLeast: 300);
    }
}

/// <summary>The RabbitMQ cluster's row of the fault table (see <see cref="ChaosTests"/>): three nodes, a quorum telemetry queue.</summary>
[Trait("Speed", "Slow")]
public class ChaosRabbitTests
{
    const string Consuming = "Server consuming telemetry from AMQP queue nightlight.telemetry on amqp://127.0.0.1:";

    [Fact]
    public async Task The_telemetry_queue_deleted_and_a_RabbitMQ_node_killed_lose_nothing_with_a_quorum_queue()
    {
        await using var cluster = await RabbitCluster.StartAsync(nodeCount: 3);
        TestContext.Current.TestOutputHelper?.WriteLine($"three-node RabbitMQ cluster up in {cluster.Startup.TotalSeconds:F1} s");
        await using var rig = new ChaosTests.Rig();
        // Devices and the server's MQTT (commands, stored acknowledgements) on b and c; the server's AMQP may use any node.
        rig.UseBroker($"{cluster.Nodes[1].MqttUrl},{cluster.Nodes[2].MqttUrl}");
        rig.ServerEnvironment["NIGHTLIGHT_Server__Amqp__QueueType"] = "quorum";
        await rig.StartServerAsync(null, "--ingest", "amqp", "--amqp", cluster.AmqpUrls);
        await rig.Server.WaitForErrorLineAsync(Consuming, ChaosTests.Wait);
        await rig.StartDevicesAsync();

        // The queue deleted under the running server (an operator's mistake): it says so in one line, declares it again,
        // and the devices send again what was lost with it.
        var factory = new RabbitMQ.Client.ConnectionFactory { Uri = new Uri(cluster.Nodes[0].AmqpUrl) };
        await using (var connection = await factory.CreateConnectionAsync())
        await using (var channel = await connection.CreateChannelAsync())
        {
            await channel.QueueDeleteAsync("nightlight.telemetry", ifUnused: false, ifEmpty: false);
        }
        await rig.Server.WaitForErrorLineAsync("AMQP queue nightlight.telemetry is gone", ChaosTests.Wait);
        await rig.WaitStoredAsync(20);
        await rig.WaitNothingMissingAsync();
        Assert.Single(rig.Server.StderrLines, l => l.Contains("AMQP queue nightlight.telemetry is gone", StringComparison.Ordinal));

        // The node the server consumes from (where it declared the queue, so its leader) killed with -9: the quorum queue
        // goes on with the other two, and the server's connection moves to one of them.
        var port = rig.Server.StderrLines.Last(l => l.Contains(Consuming, StringComparison.Ordinal)).Split(Consuming)[1].TrimEnd('/').Split(' ', '/')[0];
        var consumed = cluster.Nodes.Single(n => n.AmqpPort.ToString(CultureInfo.InvariantCulture) == port);
        cluster.Kill(consumed);
        await Task.Delay(TimeSpan.FromSeconds(5));
        await rig.WaitStoredAsync(20);
        await rig.WaitNothingMissingAsync();

        await rig.StopAndTallyAsync("RabbitMQ, 3 nodes, quorum queue: the queue deleted, then the consumed node kill -9", atLeast: 400);
    }
}
