using Nightlight.Bench;

// One console app, one subcommand per benchmark; each prints its figures as Markdown for docs/benchmarks.md.
var benchmarks = new Dictionary<string, (string Description, Func<string[], Task<int>> Run)>(StringComparer.Ordinal)
{
    ["outbox"] = ("Device outbox: steady-state cost per reading, and replay of a backlog through Mosquitto", OutboxBench.RunAsync),
    ["idle"] = ("Broker: time to connect N idle devices and resident memory per idle device, ours beside Mosquitto", IdleBench.RunAsync),
    ["protocols"] = ("MQTT QoS 0 and 1 versus HTTP (keep-alive, new connection): bytes on the wire and round trip per reading", ProtocolBench.RunAsync),
};

if (args.Length == 0 || !benchmarks.TryGetValue(args[0], out var benchmark))
{
    Console.Error.WriteLine("usage: Nightlight.Bench <benchmark> [options]");
    foreach (var (name, (description, _)) in benchmarks)
    {
        Console.Error.WriteLine($"  {name,-10} {description}");
    }
    return 2;
}
return await benchmark.Run(args[1..]);
