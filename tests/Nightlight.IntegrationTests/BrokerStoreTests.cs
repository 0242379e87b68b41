using System.Net;
using MQTTnet;
using MQTTnet.Formatter;
using MQTTnet.Protocol;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>
/// The session store of <c>nightlight broker</c> (<c>{data}/broker</c>) under kill -9 and damage, seen by MQTTnet clients:
/// 100 acknowledged messages come back in order and once, and a damaged record costs that record only. The black-box
/// kill -9 tests that run against Mosquitto too are in Broker/BrokerPersistenceTests.cs.
/// </summary>
public class BrokerStoreTests : IAsyncDisposable
{
    readonly TempDirectory _data = new("broker-data");
    readonly int _mqtt = Ports.Free();
    readonly int _http = Ports.Free();
    ProcessRunner? _broker;

    public async ValueTask DisposeAsync()
    {
        if (_broker is not null)
        {
            await _broker.DisposeAsync();
        }
        _data.Dispose();
    }

    async Task<ProcessRunner> StartBrokerAsync(string? data = null)
    {
        var broker = NightlightCli.Start("broker", "--mqtt-port", _mqtt.ToString(), "--http-port", _http.ToString(), "--data", data ?? _data.Path);
        await broker.StopIfNotReadyAsync(p => p.WaitForErrorLineAsync("MQTT broker listening", TimeSpan.FromSeconds(30)));
        _broker = broker;
        return broker;
    }

    async Task KillBrokerAsync()
    {
        _broker!.Signal("KILL");
        Assert.True(await _broker.WaitForExitAsync(TimeSpan.FromSeconds(20)), "the broker did not die");
        await _broker.DisposeAsync();
        _broker = null;
    }

    /// <summary>The session "keeper": persistent (3.1.1 clean session 0, or 5 with a day's expiry), subscribed to x/# at QoS 1.</summary>
    Task<MqttProbe> ConnectKeeperAsync(MqttProtocolVersion version) =>
        MqttProbe.ConnectAsync(_mqtt, version, "keeper", configure: b => b.WithCleanSession(false).WithSessionExpiryInterval(86_400));

    [Theory]
    [InlineData(MqttProtocolVersion.V311)]
    [InlineData(MqttProtocolVersion.V500)]
    public async Task Queued_qos1_messages_and_retained_messages_survive_kill_9_in_order_and_once(MqttProtocolVersion version)
    {
        await StartBrokerAsync();
        await using (var keeper = await ConnectKeeperAsync(version))
        {
            await keeper.SubscribeAsync("x/#", MqttQualityOfServiceLevel.AtLeastOnce);
        }
        await using (var publisher = await MqttProbe.ConnectAsync(_mqtt, version, "publisher"))
        {
            for (var i = 1; i <= 100; i++)
            {
                // Returns once the broker's PUBACK arrived: from then on the broker answers for the message.
                await publisher.PublishAsync($"x/{i}", $"m{i:D3}", MqttQualityOfServiceLevel.AtLeastOnce);
            }
            await publisher.PublishAsync("status/lamp1", "online", MqttQualityOfServiceLevel.AtLeastOnce, retain: true);
        }

        await KillBrokerAsync();
        var broker = await StartBrokerAsync();

        await using (var keeper = await ConnectKeeperAsync(version))
        {
            await keeper.WaitForAsync(m => m.Topic.StartsWith("x/", StringComparison.Ordinal), count: 100, timeout: TimeSpan.FromSeconds(30));
            // Anything sent twice would come right behind the rest; give it time to show.
            await Task.Delay(1000);
            Assert.Equal(Enumerable.Range(1, 100).Select(i => $"x/{i}=m{i:D3}"), keeper.Received.Select(m => $"{m.Topic}={m.Payload}"));
        }
        await using var late = await MqttProbe.ConnectAsync(_mqtt, version, "late");
        await late.SubscribeAsync("status/+");
        var retained = await late.WaitForAsync(m => m.Topic == "status/lamp1");
        Assert.Equal(("online", true), (retained[0].Payload, retained[0].Retained));
        Assert.DoesNotContain(broker.StderrLines, l => l.Contains("damaged", StringComparison.Ordinal));
    }

    [Fact]
    public async Task A_garbled_record_in_the_store_loses_only_that_message_and_is_counted()
    {
        await StartBrokerAsync();
        await using (var keeper = await ConnectKeeperAsync(MqttProtocolVersion.V311))
        {
            await keeper.SubscribeAsync("x/#", MqttQualityOfServiceLevel.AtLeastOnce);
        }
        await using (var publisher = await MqttProbe.ConnectAsync(_mqtt, MqttProtocolVersion.V311, "publisher"))
        {
            for (var i = 1; i <= 10; i++)
            {
                await publisher.PublishAsync($"x/{i}", $"payload-{i:D3}", MqttQualityOfServiceLevel.AtLeastOnce);
            }
        }
        await KillBrokerAsync();

        // A flipped bit inside the record that holds message 5, as a bad sector would leave it.
        var store = Path.Combine(_data.Path, "broker");
        var damaged = 0;
        foreach (var file in Directory.GetFiles(store))
        {
            var bytes = File.ReadAllBytes(file);
            var at = bytes.AsSpan().IndexOf("payload-005"u8);
            if (at >= 0)
            {
                bytes[at + 3] ^= 0x10;
                File.WriteAllBytes(file, bytes);
                damaged++;
            }
        }
        Assert.Equal(1, damaged);

        var broker = await StartBrokerAsync();
        await broker.WaitForErrorLineAsync("skipped 1 damaged records");
        await using (var keeper = await ConnectKeeperAsync(MqttProtocolVersion.V311))
        {
            await keeper.WaitForAsync(m => m.Topic.StartsWith("x/", StringComparison.Ordinal), count: 9, timeout: TimeSpan.FromSeconds(30));
            await Task.Delay(1000);
            Assert.Equal(Enumerable.Range(1, 10).Where(i => i != 5).Select(i => $"payload-{i:D3}"), keeper.Received.Select(m => m.Payload));
        }
        using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{_http}") };
        var metrics = await http.GetStringAsync("/metrics", TestContext.Current.CancellationToken);
        var counter = metrics.Split('\n').FirstOrDefault(l => l.StartsWith("nightlight_broker_store_damaged", StringComparison.Ordinal));
        Assert.True(counter is not null, "no nightlight_broker_store_damaged in /metrics");
        Assert.Equal("1", counter.Split(' ')[^1]);
    }

    /// <summary>
    /// A data directory that a newer Nightlight wrote: the broker stops with one line that names the file and says what
    /// to do, instead of reading the unknown records as damage and overwriting them with what it understood.
    /// </summary>
    [Fact]
    public async Task A_store_from_a_newer_version_stops_the_broker_with_one_line_and_is_left_alone()
    {
        var store = Directory.CreateDirectory(Path.Combine(_data.Path, "broker")).FullName;
        var snapshot = Path.Combine(store, "snapshot");
        // The snapshot header record (kind 10) of format 99 in the store's envelope: body length, CRC-32 of those 4
        // bytes, CRC-32 of the body, then the body.
        var body = new byte[21];
        body[0] = 10;
        System.Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(body.AsSpan(1), 99);
        var record = new byte[12 + body.Length];
        System.Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(record, body.Length);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(record.AsSpan(4), System.IO.Hashing.Crc32.HashToUInt32(record.AsSpan(0, 4)));
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(record.AsSpan(8), System.IO.Hashing.Crc32.HashToUInt32(body));
        body.CopyTo(record, 12);
        File.WriteAllBytes(snapshot, record);

        var broker = NightlightCli.Start("broker", "--mqtt-port", _mqtt.ToString(), "--http-port", _http.ToString(), "--data", _data.Path);
        _broker = broker;
        Assert.True(await broker.WaitForExitAsync(TimeSpan.FromSeconds(60)), $"the broker started on a store it cannot read: {broker.Describe()}");
        Assert.Equal(1, broker.ExitCode);
        var refusal = broker.StderrLines.Where(l => l.Contains("format 99", StringComparison.Ordinal)).ToList();
        Assert.True(refusal is [var line] && line.StartsWith("error: ", StringComparison.Ordinal) && line.Contains(snapshot, StringComparison.Ordinal)
            && line.Contains("newer", StringComparison.Ordinal) && !broker.StderrLines.Any(l => l.Contains("damaged", StringComparison.Ordinal) || l.StartsWith("   at ", StringComparison.Ordinal)),
            $"expected one error line naming {snapshot}, got:\n{broker.Stderr}");
        Assert.Equal(record, File.ReadAllBytes(snapshot));
    }

    static string Payload(int i) => $"m{i:D4} " + new string('x', 1000);

    async Task<double> MetricAsync(HttpClient http, string name)
    {
        var metrics = await http.GetStringAsync("/metrics", TestContext.Current.CancellationToken);
        var line = metrics.Split('\n').FirstOrDefault(l => l.StartsWith(name, StringComparison.Ordinal));
        Assert.True(line is not null, $"no {name} in /metrics");
        return double.Parse(line[(line.LastIndexOf(' ') + 1)..], System.Globalization.CultureInfo.InvariantCulture);
    }

    async Task WaitUntilReadyIsAsync(HttpClient http, HttpStatusCode status, string body)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (true)
        {
            var response = await http.GetAsync("/readyz", TestContext.Current.CancellationToken);
            var text = await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken);
            if ((response.StatusCode, text) == (status, body) || DateTime.UtcNow > deadline)
            {
                Assert.Equal((status, body), (response.StatusCode, text));
                return;
            }
            await Task.Delay(200, TestContext.Current.CancellationToken);
        }
    }

    static async Task ProbeReadyAsync(HttpClient http, int times)
    {
        for (var i = 0; i < times; i++)
        {
            (await http.GetAsync("/readyz", TestContext.Current.CancellationToken)).Dispose();
        }
    }

    /// <summary>
    /// The store on a disk that fills up under it: the broker goes on serving from memory, says so once (log line,
    /// counter, /readyz Degraded), and once space is back it writes everything it holds, so a kill -9 then loses nothing.
    /// </summary>
    [Fact]
    public async Task A_full_disk_keeps_the_broker_serving_and_sessions_are_stored_again_once_space_is_back()
    {
        using var disk = new SmallDisk(kibibytes: 2048);
        var broker = await StartBrokerAsync(disk.Path);
        using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{_http}") };
        await using (var keeper = await ConnectKeeperAsync(MqttProtocolVersion.V500))
        {
            await keeper.SubscribeAsync("x/#", MqttQualityOfServiceLevel.AtLeastOnce);
        }
        await using var live = await MqttProbe.ConnectAsync(_mqtt, MqttProtocolVersion.V500, "live");
        await live.SubscribeAsync("x/#", MqttQualityOfServiceLevel.AtLeastOnce);
        await using var publisher = await MqttProbe.ConnectAsync(_mqtt, MqttProtocolVersion.V500, "publisher");
        for (var i = 1; i <= 5; i++)
        {
            await publisher.PublishAsync($"x/{i}", Payload(i), MqttQualityOfServiceLevel.AtLeastOnce);
        }

        disk.Fill();
        // Far more than the last page of the journal holds: these need space the disk no longer has.
        for (var i = 6; i <= 300; i++)
        {
            await publisher.PublishAsync($"x/{i}", Payload(i), MqttQualityOfServiceLevel.AtLeastOnce);
        }
        await live.WaitForAsync(m => m.Topic.StartsWith("x/", StringComparison.Ordinal), count: 300, timeout: TimeSpan.FromSeconds(30));
        await broker.WaitForErrorLineAsync("cannot write");
        await WaitUntilReadyIsAsync(http, HttpStatusCode.OK, "Degraded");
        Assert.True(await MetricAsync(http, "nightlight_broker_store_write_failures") > 0, "the refused write is not counted");
        await ProbeReadyAsync(http, times: 5);

        disk.Free();
        await broker.WaitForErrorLineAsync("the disk takes writes again", TimeSpan.FromSeconds(30));
        await WaitUntilReadyIsAsync(http, HttpStatusCode.OK, "Healthy");
        await ProbeReadyAsync(http, times: 5);
        // One line each from the store and from readiness for the whole outage, however often /readyz was probed.
        var store = broker.StderrLines.Where(l => l.Contains("Broker store", StringComparison.Ordinal)).ToList();
        Assert.True(store.Count(l => l.Contains("cannot write", StringComparison.Ordinal)) == 1,
            $"one line for one full disk, got:\n{string.Join('\n', store)}");
        var readiness = broker.StderrLines.Where(l => l.Contains("Degraded", StringComparison.Ordinal) || l.Contains("Readiness", StringComparison.Ordinal)).ToList();
        Assert.True(readiness.Count(l => l.Contains("kept in memory only", StringComparison.Ordinal)) == 1
            && readiness.Count(l => l.Contains("Readiness of broker: Healthy", StringComparison.Ordinal)) == 1,
            $"one readiness line when the broker became Degraded and one when it was Healthy again, got:\n{string.Join('\n', readiness)}");
        await publisher.PublishAsync("x/301", Payload(301), MqttQualityOfServiceLevel.AtLeastOnce);

        await KillBrokerAsync();
        await StartBrokerAsync(disk.Path);
        await using var back = await ConnectKeeperAsync(MqttProtocolVersion.V500);
        await back.WaitForAsync(m => m.Topic.StartsWith("x/", StringComparison.Ordinal), count: 301, timeout: TimeSpan.FromSeconds(30));
        Assert.Equal(Enumerable.Range(1, 301).Select(i => $"x/{i}={Payload(i)}"), back.Received.Select(m => $"{m.Topic}={m.Payload}"));
    }
}
