using System.CommandLine;
using Nightlight.Cli;

// The command line is a table of contents: each command names the roles it runs; Hosts builds them.
// A plain command named as users type it: RootCommand takes its name from the assembly (Nightlight.dll → "Nightlight").
var root = new Command("nightlight", "Nightlight: the IoT for Beginners nightlight, made real — MQTT broker, device and server.")
{
    new System.CommandLine.Help.HelpOption(),
    new VersionOption(),
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

var parse = root.Parse(args);
if (parse.Errors.Count > 0 && parse.CommandResult.Command != root)
{
    // A bad flag is a bad setting: one line each and exit 2, not the whole help text.
    foreach (var error in parse.Errors)
    {
        Console.Error.WriteLine($"error: {error.Message}");
    }
    Console.Error.WriteLine($"(nightlight {parse.CommandResult.Command.Name} --help lists the flags)");
    return 2;
}

// The host handles Ctrl+C and SIGTERM itself and stops every role cleanly.
return await parse.InvokeAsync(new InvocationConfiguration { ProcessTerminationTimeout = null });
