using System.Collections.Concurrent;
using System.Text.Json;
using MQTTnet.Protocol;
using Nightlight.Tests.Support;
using Npgsql;

namespace Nightlight.Tests;

/// <summary>
/// Beyond one machine: a two-node RabbitMQ cluster (its MQTT plugin speaks 3.1.1 only), devices that fail over from a
/// node killed with SIGKILL, and servers that share the telemetry through an AMQP queue while one of them is killed.
/// </summary>
[Trait("Speed", "Slow")]
public class RabbitClusterTests
{
    static readonly TimeSpan Wait = TimeSpan.FromSeconds(60);

    [Fact]
    public async Task Devices_fail_over_when_their_node_is_killed_and_lose_or_reorder_nothing()
    {
        await using var cluster = await RabbitCluster.StartAsync();
        TestContext.Current.TestOutputHelper?.WriteLine($"two-node RabbitMQ cluster up in {cluster.Startup.TotalSeconds:F1} s");
        var (a, b) = (cluster.Nodes[0], cluster.Nodes[1]);

        // The receiver sits on the node that survives; its queue holds what either node routed to it.
        await using var receiver = await MqttProbe.ConnectAsync(b.MqttPort);
        await receiver.SubscribeAsync("+/telemetry", MqttQualityOfServiceLevel.AtLeastOnce);

        // Devices spread over both nodes: each lists its own node first and the other as the fallback.
        var ids = new[] { "fo0", "fo1", "fo2", "fo3" };
        var devices = new List<ProcessRunner>();
        try
        {
            for (var i = 0; i < ids.Length; i++)
            {
                var brokers = i % 2 == 0 ? $"{a.MqttUrl},{b.MqttUrl}" : $"{b.MqttUrl},{a.MqttUrl}";
                devices.Add(NightlightCli.Start("device", "--broker", brokers, "--id", ids[i], "--interval", "100ms", "--light", "100",
                    "--offline", "all", "--sync", "never", "--quiet"));
            }
            await WaitForReadingsAsync(receiver, ids, 10);

            cluster.Kill(a);
            var atKill = Seqs(receiver).ToDictionary(p => p.Key, p => p.Value.Count);

            // Devices on a lose their connection and move to b (the only node left, so their readings after the kill
            // prove it); each keeps sending and replays what it kept meanwhile.
            await WaitForReadingsAsync(receiver, ids, 0, atKill, more: 20);
        }
        finally
        {
            foreach (var device in devices)
            {
                device.Signal("TERM");
            }
            foreach (var device in devices)
            {
                await device.WaitForExitAsync(TimeSpan.FromSeconds(20));
                await device.DisposeAsync();
            }
        }

        foreach (var (id, seqs) in Seqs(receiver))
        {
            // Nothing lost: every seq from the first to the last arrived. Nothing reordered: first arrivals ascend.
            // A reading the dead node took but could not confirm may arrive twice (at least once); never out of order.
            var firsts = seqs.Distinct().ToList();
            Assert.True(firsts.SequenceEqual(firsts.Order()), $"{id}: readings out of order: {string.Join(",", firsts)}");
            var expected = Enumerable.Range((int)firsts[0], (int)(firsts[^1] - firsts[0] + 1)).Select(s => (long)s);
            var missing = expected.Except(firsts).ToList();
            Assert.True(missing.Count == 0, $"{id}: lost seqs {string.Join(",", missing)} of {firsts[0]}..{firsts[^1]}");
            TestContext.Current.TestOutputHelper?.WriteLine($"{id}: seq {firsts[0]}..{firsts[^1]}, {seqs.Count - firsts.Count} duplicates");
        }
    }

    [Fact]
    public async Task Two_servers_sharing_an_amqp_queue_store_every_reading_once_when_one_is_killed()
    {
        await using var cluster = await RabbitCluster.StartAsync();
        TestContext.Current.TestOutputHelper?.WriteLine($"two-node RabbitMQ cluster up in {cluster.Startup.TotalSeconds:F1} s");
        await using var postgres = await PostgresServer.StartAsync();
        var database = await postgres.CreateDatabaseAsync();
        var (a, b) = (cluster.Nodes[0], cluster.Nodes[1]);

        // Both servers store into one PostgreSQL database; each connects its MQTT (commands) and AMQP (telemetry) to a
        // different node. Both have the same group rule: three sensors decide one lamp by their median.
        await using var first = StartServer("--broker", $"{a.MqttUrl},{b.MqttUrl}", "--ingest", "amqp",
            "--amqp", $"{a.AmqpUrl},{b.AmqpUrl}", "--database", database, "--quiet");
        await using var second = StartServer("--broker", $"{b.MqttUrl},{a.MqttUrl}", "--ingest", "amqp",
            "--amqp", $"{b.AmqpUrl},{a.AmqpUrl}", "--database", database, "--quiet");
        await first.WaitForErrorLineAsync("Server consuming telemetry from AMQP queue", Wait);
        await second.WaitForErrorLineAsync("Server consuming telemetry from AMQP queue", Wait);

        // The devices: a publisher on each node (MQTT 3.1.1, QoS 1), readings with a seq; their commands come back on b.
        await using var answers = await MqttProbe.ConnectAsync(b.MqttPort);
        await answers.SubscribeAsync("+/commands", MqttQualityOfServiceLevel.AtLeastOnce);
        await using var onA = await MqttProbe.ConnectAsync(a.MqttPort);
        await using var onB = await MqttProbe.ConnectAsync(b.MqttPort);

        // The group is decided by one server only (single active consumer): one command when the lamp should go on,
        // where two deciding servers would send two.
        for (var s = 0; s < 3; s++)
        {
            await onA.PublishAsync($"lot-{s}/telemetry", $"{{\"light\": 100, \"seq\": 1}}", MqttQualityOfServiceLevel.AtLeastOnce);
        }
        await answers.WaitForAsync(m => m.Topic == "lamp/commands", 1, Wait);
        await Task.Delay(1000);
        Assert.Equal(["on"], LampCommands(answers));

        const int deviceCount = 8, perDevice = 150;
        var ids = Enumerable.Range(0, deviceCount).Select(d => $"amqp{d}").ToArray();
        var killedAt = 0;
        for (var seq = 1; seq <= perDevice; seq++)
        {
            for (var d = 0; d < deviceCount; d++)
            {
                var light = seq % 2 == 0 ? 100 : 900;
                await (d % 2 == 0 ? onA : onB).PublishAsync($"{ids[d]}/telemetry", $"{{\"light\": {light}, \"seq\": {seq}}}", MqttQualityOfServiceLevel.AtLeastOnce);
            }
            if (seq == perDevice / 3)
            {
                // Mid-run, while the first server holds readings it has not stored yet.
                first.Signal("KILL");
                killedAt = answers.Received.Count;
            }
            await Task.Delay(10);
        }
        Assert.True(await first.WaitForExitAsync(TimeSpan.FromSeconds(10)), "the first server did not die");

        // Every reading stored, none twice.
        await using var db = new NpgsqlConnection(database);
        await db.OpenAsync();
        var counts = new Dictionary<string, (long Rows, long Distinct)>();
        var deadline = DateTime.UtcNow + Wait;
        do
        {
            counts.Clear();
            await using var query = db.CreateCommand();
            query.CommandText = "SELECT device_id, count(*), count(DISTINCT seq) FROM readings GROUP BY device_id";
            await using var reader = await query.ExecuteReaderAsync();
            while (await reader.ReadAsync())
            {
                counts[reader.GetString(0)] = (reader.GetInt64(1), reader.GetInt64(2));
            }
        }
        while (ids.Sum(id => counts.GetValueOrDefault(id).Rows) < deviceCount * perDevice && DateTime.UtcNow < deadline && await Task.Delay(250).ContinueWith(_ => true));
        foreach (var id in ids)
        {
            Assert.True(counts.TryGetValue(id, out var c), $"{id}: nothing stored\n{second.Describe()}");
            Assert.Equal((perDevice, perDevice), c);
        }
        await using (var range = db.CreateCommand())
        {
            range.CommandText = "SELECT min(seq), max(seq) FROM readings WHERE device_id LIKE 'amqp%'";
            await using var reader = await range.ExecuteReaderAsync();
            await reader.ReadAsync();
            Assert.Equal((1L, (long)perDevice), (reader.GetInt64(0), reader.GetInt64(1)));
        }

        // Devices kept getting answers after the kill: every device got commands from the surviving server.
        var afterKill = answers.Received.Skip(killedAt).Where(m => m.Topic.EndsWith("/commands", StringComparison.Ordinal))
            .Select(m => m.Topic[..m.Topic.IndexOf('/', StringComparison.Ordinal)]).ToHashSet();
        Assert.True(ids.All(afterKill.Contains), $"no commands after the kill for {string.Join(",", ids.Except(afterKill))}");
        Assert.False(second.HasExited, second.Describe());

        // The group rule survived the kill: the remaining server owns the group now and turns the lamp off once.
        for (var s = 0; s < 3; s++)
        {
            await onB.PublishAsync($"lot-{s}/telemetry", $"{{\"light\": 900, \"seq\": 2}}", MqttQualityOfServiceLevel.AtLeastOnce);
        }
        await answers.WaitForAsync(m => m.Topic == "lamp/commands", 2, Wait);
        await Task.Delay(1000);
        Assert.Equal(["on", "off"], LampCommands(answers));
    }

    static List<string> LampCommands(MqttProbe answers) =>
    [
        .. answers.Received.Where(m => m.Topic == "lamp/commands")
            .Select(m => JsonDocument.Parse(m.Payload).RootElement.GetProperty("led_on").GetBoolean() ? "on" : "off"),
    ];

    /// <summary><c>nightlight server</c> with a group rule: sensors lot-0..2 decide the lamp by their median.</summary>
    static ProcessRunner StartServer(params string[] args)
    {
        var environment = new Dictionary<string, string>
        {
            ["NIGHTLIGHT_Rules__Groups__0__Name"] = "car-park",
            ["NIGHTLIGHT_Rules__Groups__0__Lights__0"] = "lamp",
            ["NIGHTLIGHT_Rules__Groups__0__Decision"] = "median",
            ["NIGHTLIGHT_Rules__Groups__0__On"] = "300",
            ["NIGHTLIGHT_Rules__Groups__0__Off"] = "340",
            ["NIGHTLIGHT_Rules__Groups__0__MaxAge"] = "10m",
            ["NIGHTLIGHT_Rules__Groups__0__Answer"] = "changes",
        };
        for (var s = 0; s < 3; s++)
        {
            environment[$"NIGHTLIGHT_Rules__Groups__0__Sensors__{s}"] = $"lot-{s}";
        }
        return NightlightCli.StartWith(environment, ["server", .. args]);
    }

    static Dictionary<string, List<long>> Seqs(MqttProbe receiver)
    {
        var seqs = new Dictionary<string, List<long>>();
        foreach (var (topic, payload, _) in receiver.Received.ToList())
        {
            using var json = JsonDocument.Parse(payload);
            var id = topic[..topic.IndexOf('/', StringComparison.Ordinal)];
            if (!seqs.TryGetValue(id, out var list))
            {
                seqs[id] = list = [];
            }
            list.Add(json.RootElement.GetProperty("seq").GetInt64());
        }
        return seqs;
    }

    static async Task WaitForReadingsAsync(MqttProbe receiver, string[] ids, int count, Dictionary<string, int>? from = null, int more = 0)
    {
        var deadline = DateTime.UtcNow + Wait;
        while (true)
        {
            var seqs = Seqs(receiver);
            var short_ = ids.Where(id => !seqs.TryGetValue(id, out var s) || s.Count < count + (from?.GetValueOrDefault(id) ?? 0) + more).ToList();
            if (short_.Count == 0)
            {
                return;
            }
            if (DateTime.UtcNow > deadline)
            {
                Assert.Fail($"readings did not arrive from {string.Join(",", short_)}: {string.Join("; ", seqs.Select(p => $"{p.Key}={p.Value.Count}"))}");
            }
            await Task.Delay(100);
        }
    }
}
