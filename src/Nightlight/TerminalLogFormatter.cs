using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Logging.Console;

namespace Nightlight.Cli;

/// <summary>
/// One log line as a person reads it: <c>12:42:10 warn: message</c>. No category (an internal class name means
/// nothing to a learner) and no colour codes, which would reach a file or pipe that standard error goes to.
/// </summary>
sealed class TerminalLogFormatter() : ConsoleFormatter(FormatterName)
{
    public const string FormatterName = "nightlight";

    public override void Write<TState>(in LogEntry<TState> logEntry, IExternalScopeProvider? scopeProvider, TextWriter textWriter)
    {
        var message = logEntry.Formatter(logEntry.State, logEntry.Exception);
        if (message is null && logEntry.Exception is null)
        {
            return;
        }
        var level = logEntry.LogLevel switch
        {
            LogLevel.Trace => "trce",
            LogLevel.Debug => "dbug",
            LogLevel.Information => "info",
            LogLevel.Warning => "warn",
            LogLevel.Error => "fail",
            _ => "crit",
        };
        textWriter.Write($"{DateTime.Now:HH:mm:ss} {level}: {message}");
        if (logEntry.Exception is { } e)
        {
            // A bug's stack trace is worth its lines; it goes with the error it explains.
            textWriter.Write($"{Environment.NewLine}{e}");
        }
        textWriter.WriteLine();
    }
}
