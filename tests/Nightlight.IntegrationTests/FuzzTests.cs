using System.Net.Sockets;
using System.Text;
using Nightlight.Protocol;
using Nightlight.Tests.Support;
using Xunit.Sdk;

namespace Nightlight.Tests;

/// <summary>
/// Random and mutated MQTT packets at the real broker's port, random payloads at the parser. The in-suite run is
/// short; <c>NIGHTLIGHT_FUZZ_PACKETS=200000</c> makes it the long run documented in docs/security.md.
/// </summary>
public class FuzzTests(ITestOutputHelper output)
{
    static int PacketCount => int.TryParse(Environment.GetEnvironmentVariable("NIGHTLIGHT_FUZZ_PACKETS"), out var n) ? n : 100_000;

    static readonly byte[][] Seeds =
    [
        Packets.Connect311("fuzz"),
        Packets.Connect311("fuzz", "user", "pass"),
        // MQTT 5 CONNECT with an empty property block.
        Packets.Frame(0x10, [.. Packets.String("MQTT"), 5, 0x02, 0, 60, 0, .. Packets.String("fuzz5")]),
        Packets.Publish("fuzz/telemetry", "{\"light\": 1}"u8.ToArray()),
        Packets.Publish("fuzz/telemetry", "{\"light\": 1}"u8.ToArray(), qos: 1, packetId: 7),
        Packets.Publish("fuzz/telemetry", "{\"light\": 1}"u8.ToArray(), qos: 2, packetId: 8),
        Packets.Subscribe("fuzz/#"),
        Packets.Subscribe("#"),
        Packets.Frame(0xA2, [0, 3, .. Packets.String("fuzz/#")]),
        Packets.Frame(0x40, [0, 7]),
        Packets.Frame(0x50, [0, 8]),
        Packets.Frame(0x62, [0, 8]),
        Packets.Frame(0x70, [0, 8]),
        Packets.PingReq,
        Packets.Disconnect,
        Packets.Frame(0xF0, [0, 0]),
    ];

    static byte[] Mutate(Random random)
    {
        if (random.Next(10) == 0)
        {
            var noise = new byte[random.Next(1, 300)];
            random.NextBytes(noise);
            return noise;
        }
        var packet = Seeds[random.Next(Seeds.Length)].ToList();
        for (var i = random.Next(0, 4); i > 0 && packet.Count > 0; i--)
        {
            var at = random.Next(packet.Count);
            switch (random.Next(6))
            {
                case 0: packet[at] ^= (byte)(1 << random.Next(8)); break;
                case 1: packet[at] = (byte)random.Next(256); break;
                case 2: packet.RemoveRange(at, packet.Count - at); break;
                case 3: packet.Insert(at, (byte)random.Next(256)); break;
                case 4: packet.InsertRange(at, packet.Take(random.Next(1, Math.Min(64, packet.Count) + 1)).ToList()); break;
                default: if (packet.Count > 1) { packet[1] = (byte)random.Next(256); } break;
            }
        }
        return [.. packet];
    }

    static long RssKb(int pid)
    {
        var line = File.ReadLines($"/proc/{pid}/status").First(l => l.StartsWith("VmRSS:", StringComparison.Ordinal));
        return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], System.Globalization.CultureInfo.InvariantCulture);
    }

    [Fact]
    public async Task The_broker_survives_random_and_mutated_packets_and_keeps_serving_a_device()
    {
        var (broker, port, _) = await NightlightCli.StartBrokerAsync();
        await using (broker)
        {
            await using var device = await MqttProbe.ConnectAsync(port, clientId: Topics.DeviceClientId("steady"));
            await device.SubscribeAsync("steady/#");
            var rssBefore = RssKb(broker.Id);
            long sent = 0, connections = 0, roundTrips = 0;
            var target = PacketCount;
            var workers = Enumerable.Range(0, 8).Select(w => Task.Run(async () =>
            {
                var random = new Random(1000 + w);
                while (Interlocked.Read(ref sent) < target)
                {
                    using var tcp = new TcpClient { NoDelay = true, LingerState = new LingerOption(true, 0) };
                    await tcp.ConnectAsync("127.0.0.1", port);
                    Interlocked.Increment(ref connections);
                    var stream = tcp.GetStream();
                    // Drain whatever the broker answers so its writes never block on us.
                    _ = Task.Run(async () =>
                    {
                        var sink = new byte[4096];
                        try
                        {
                            while (await stream.ReadAsync(sink) > 0)
                            {
                            }
                        }
                        catch (Exception e) when (e is IOException or ObjectDisposedException)
                        {
                        }
                    });
                    try
                    {
                        // Mostly a valid CONNECT first, so the fuzz reaches past the handshake.
                        if (random.Next(4) != 0)
                        {
                            await stream.WriteAsync(Seeds[random.Next(3)]);
                            Interlocked.Increment(ref sent);
                        }
                        for (var i = random.Next(1, 100); i > 0; i--)
                        {
                            await stream.WriteAsync(Mutate(random));
                            Interlocked.Increment(ref sent);
                        }
                    }
                    catch (IOException)
                    {
                        // The broker hung up on this connection, as it should for garbage.
                    }
                }
            })).ToList();

            // The steady device is served throughout.
            while (!workers.All(w => w.IsCompleted))
            {
                var payload = $"{{\"light\": {roundTrips}}}";
                await device.PublishAsync("steady/telemetry", payload);
                await device.WaitForAsync(m => m.Payload == payload);
                roundTrips++;
                await Task.WhenAny(Task.WhenAll(workers), Task.Delay(250));
            }
            await Task.WhenAll(workers);
            var after = $"{{\"light\": -{roundTrips}}}";
            await device.PublishAsync("steady/telemetry", after);
            await device.WaitForAsync(m => m.Payload == after);
            var rssAfter = RssKb(broker.Id);
            output.WriteLine($"{sent} packets on {connections} connections; {roundTrips} round trips of the steady device; broker RSS {rssBefore / 1024} MB before, {rssAfter / 1024} MB after");

            Assert.False(broker.HasExited);
            var failure = broker.StderrLines.FirstOrDefault(l => l.Contains("Unhandled exception", StringComparison.Ordinal) || l.Contains("fail:", StringComparison.Ordinal));
            Assert.True(failure is null, failure);
            Assert.True(sent >= target);
            Assert.True(roundTrips > 0);
            // Bounded: a broker that kept every fuzz connection's buffers would be far above this.
            Assert.True(rssAfter < 600 * 1024, $"broker RSS {rssAfter / 1024} MB");
        }
    }

    [Fact]
    public void The_parser_returns_true_or_false_for_random_and_mutated_payloads_and_never_throws()
    {
        var random = new Random(42);
        string[] seeds = ["{\"light\": 412}", "{\"light\": 1.5, \"temperature\": 18.5, \"seq\": 7, \"ts\": 1764100000000}", "{\"light\": NaN}", "[1,[2,{\"a\":3}]]", "{\"light\": 1e308}"];
        var accepted = 0;
        for (var i = 0; i < 100_000; i++)
        {
            byte[] payload;
            if (i % 3 == 0)
            {
                payload = new byte[random.Next(0, 200)];
                random.NextBytes(payload);
            }
            else
            {
                var bytes = Encoding.UTF8.GetBytes(seeds[random.Next(seeds.Length)]).ToList();
                for (var m = random.Next(1, 5); m > 0 && bytes.Count > 0; m--)
                {
                    var at = random.Next(bytes.Count);
                    switch (random.Next(3))
                    {
                        case 0: bytes[at] = (byte)random.Next(256); break;
                        case 1: bytes.Insert(at, (byte)"{}[]\",:0123456789eE.-+\\u"[random.Next(24)]); break;
                        default: bytes.RemoveAt(at); break;
                    }
                }
                payload = [.. bytes];
            }
            if (TelemetryParser.TryParse("fuzz", payload, out _, out var error))
            {
                accepted++;
            }
            else
            {
                Assert.False(string.IsNullOrWhiteSpace(error));
            }
        }
        output.WriteLine($"100000 payloads, {accepted} accepted");
        Assert.InRange(accepted, 1, 99_999);
    }
}
