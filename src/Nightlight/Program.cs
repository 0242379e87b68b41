using System.CommandLine;
using Nightlight.Cli;

// The command line is a table of contents: each command names the roles it runs; Hosts builds them.
var root = new RootCommand("Nightlight: the IoT for Beginners nightlight, made real — MQTT broker, device and server.")
{
    NightlightCommands.Up(),
    NightlightCommands.Broker(),
    NightlightCommands.Server(),
    NightlightCommands.Device(),
    NightlightCommands.Fleet(),
    NightlightCommands.Bench(),
    NightlightCommands.NaiveServer(),
    ExportCommand.Create(),
    StorageBenchCommand.Create(),
    DevicesCommands.Create(),
};

// The host handles Ctrl+C and SIGTERM itself and stops every role cleanly.
return await root.Parse(args).InvokeAsync(new InvocationConfiguration { ProcessTerminationTimeout = null });
