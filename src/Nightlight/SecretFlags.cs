namespace Nightlight.Cli;

/// <summary>
/// How a secret reaches a command without landing in the process list (<c>/proc/PID/cmdline</c>, <c>ps</c>), which
/// every local user can read: <c>--password-file FILE</c> or the environment variable. <c>--password</c> still works
/// and prints a warning.
/// </summary>
static class SecretFlags
{
    /// <summary>The password in <paramref name="path"/> (first line, surrounding whitespace removed).</summary>
    public static string ReadFile(string path)
    {
        try
        {
            var text = File.ReadAllText(path);
            var newline = text.IndexOfAny(['\r', '\n']);
            return (newline >= 0 ? text[..newline] : text).Trim();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // A bad setting: exit code 2, one line, as for any other.
            Console.Error.WriteLine($"error: --password-file {path}: {e.Message}");
            Environment.Exit(2);
            throw;
        }
    }

    /// <summary>Warns that <paramref name="flag"/> exposes its value to other local users.</summary>
    public static string? WarnOnFlag(string flag, string environmentVariable, string? value)
    {
        Console.Error.WriteLine($"warning: {flag} puts the secret in the process list, readable by every local user; " +
            $"use --password-file FILE or the environment variable {environmentVariable}");
        return value;
    }
}
