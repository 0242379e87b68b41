using System.ComponentModel.DataAnnotations;

namespace Nightlight.Cli.Bench;

/// <summary>Configuration section <c>Bench</c>: one round-trip benchmark run.</summary>
public sealed class BenchOptions
{
    public const string Section = "Bench";

    /// <summary>
    /// <c>embedded</c> starts <c>nightlight broker</c> as its own process; <c>inproc</c> starts <c>nightlight up
    /// --no-device</c>, the broker with our server inside (the in-process link); <c>mosquitto</c> starts Mosquitto (Debian
    /// <c>mosquitto</c>) as the baseline; otherwise <c>mqtt://HOST:PORT</c>, several (a cluster's nodes) separated by commas.</summary>
    public string Broker { get; set; } = "embedded";

    /// <summary>
    /// The process id of an external broker (<c>mqtt://</c>) on this machine: its CPU time and memory are read from
    /// /proc and reported beside ours. Brokers the bench starts (<c>embedded</c>, <c>inproc</c>, <c>mosquitto</c>) need none.
    /// </summary>
    public int? BrokerPid { get; set; }

    /// <summary>
    /// With a number above 0, no round trips: opens this many idle device connections to each broker of
    /// <see cref="Broker"/> (then a comma-separated list of <c>embedded</c>, <c>mosquitto</c>, measured in turn) and
    /// reports the time to connect them and the broker's resident memory per idle connection.
    /// </summary>
    [Range(0, 100_000)]
    public int Idle { get; set; }

    /// <summary>Simulated devices, each with its own connection and id.</summary>
    [Range(1, 100_000)]
    public int Devices { get; set; } = 1000;

    /// <summary>Readings per second offered by the whole fleet.</summary>
    [Range(1, 1_000_000)]
    public double Rate { get; set; } = 20_000;

    /// <summary>How long readings are sent, after the warm-up.</summary>
    public string Duration { get; set; } = "20s";

    /// <summary>Readings sent before measuring starts, to let JIT and connections settle.</summary>
    public string Warmup { get; set; } = "3s";

    /// <summary>Servers to compare, comma-separated: <c>ours</c>, <c>lesson</c> (Python, paho-mqtt), <c>naive</c> (MQTTnet, inline), <c>external</c> (already running, started by the caller).</summary>
    public string Servers { get; set; } = "ours";

    /// <summary>
    /// Times every server is measured, in turn (with <c>naive,ours</c>: naive, ours, naive, ours, ...). On a shared
    /// machine a spell of noise then falls on each server alike; the table adds each server's median and worst.
    /// </summary>
    [Range(1, 100)]
    public int Rounds { get; set; } = 1;

    /// <summary>Where to write the results as JSON; empty writes none.</summary>
    public string? Json { get; set; }

    /// <summary>Lesson threshold the servers use; readings alternate around it so a wrong command is visible.</summary>
    public double Threshold { get; set; } = 300;

    /// <summary>
    /// Readings per device between changes of its light from dark to bright or back. 1 flips every reading, so
    /// every answer changes a LED (the costliest case for a server that tracks LED changes); a real nightlight's
    /// light changes seldom, so the default is 10.
    /// </summary>
    [Range(1, 1_000_000)]
    public int FlipEvery { get; set; } = 10;

    /// <summary>
    /// <c>every</c> (the lesson: our server answers every reading) or <c>changes</c> (<c>Rules:Default:Answer</c>: only
    /// readings that change a LED are answered, so most readings are only stored). With <c>changes</c> latency and
    /// losses count the answers to those readings, and only <c>ours</c> can be measured.
    /// </summary>
    public string Answer { get; set; } = "every";

    /// <summary>
    /// Device credentials for a broker that authenticates: a file of <c>ID SECRET</c> lines (<c>nightlight devices add
    /// PREFIX --count N --save FILE</c>); the simulated devices take their ids and secrets from it. Only the <c>ours</c>
    /// server can then be measured (the baselines do not authenticate).
    /// </summary>
    public string? Credentials { get; set; }

    /// <summary>User name of the server identity <c>ours</c> connects with (<c>nightlight devices add-server NAME</c>).</summary>
    public string? ServerUsername { get; set; }

    /// <summary>Secret of <see cref="ServerUsername"/>; handed to the server process in its environment, not its command line.</summary>
    public string? ServerPassword { get; set; }

    /// <summary>
    /// Empty (default): readings are the lesson's <c>{"light": N}</c>. <c>on</c>: each reading carries its device's
    /// <c>seq</c>, the devices subscribe to <c>{id}/stored</c> and our server acknowledges stored readings there, as for
    /// devices with <c>--offline all</c>. <c>off</c>: the same numbered readings, with the server's acknowledgements off
    /// (<c>Server:StoredAcks</c> false): the pair measures what the acknowledgements cost.
    /// </summary>
    [RegularExpression("^(|on|off)$", ErrorMessage = "Bench:StoredAcks must be on or off")]
    public string? StoredAcks { get; set; }

    /// <summary>Python with paho-mqtt 1.x, for the lesson server baseline.</summary>
    public string Python { get; set; } = "/usr/bin/python3";
}
