using System.Diagnostics;

namespace Nightlight.Tests.Support;

/// <summary>A detached tmux session (on its own tmux server) running one command on a 160×40 terminal, killed at the end.</summary>
public sealed class TmuxSession(string tmux, string name, TempDirectory directory) : IAsyncDisposable
{
    public static async Task<TmuxSession> StartAsync(string tmux, string command)
    {
        var name = $"nightlight-test-{Guid.NewGuid():N}"[..28];
        // TERM and NO_COLOR set inside, so the screen holds text only; the command runs in a throwaway directory.
        var dir = new TempDirectory("tmux");
        await RunAsync(tmux, ["-L", name, "new-session", "-d", "-s", name, "-x", "160", "-y", "40", "-c", dir.Path,
            "-e", "NO_COLOR=1", "-e", "TERM=xterm", command]);
        return new TmuxSession(tmux, name, dir);
    }

    public async Task<string> WaitForScreenAsync(Func<string, bool> condition)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(45);
        var screen = "";
        while (DateTime.UtcNow < deadline)
        {
            screen = await RunAsync(tmux, ["-L", name, "capture-pane", "-p", "-t", name]);
            if (condition(screen))
            {
                return screen;
            }
            await Task.Delay(250);
        }
        throw new TimeoutException($"the terminal never showed what was expected; last screen:\n{screen}");
    }

    /// <summary>Types into the terminal: tmux key names (<c>Enter</c>, <c>C-c</c>) or literal text.</summary>
    public Task SendKeysAsync(params string[] keys) => RunAsync(tmux, ["-L", name, "send-keys", "-t", name, .. keys]);

    public async ValueTask DisposeAsync()
    {
        // Ctrl+C first so nightlight stops cleanly and releases its ports, then the session goes.
        await RunAsync(tmux, ["-L", name, "send-keys", "-t", name, "C-c"], check: false);
        await Task.Delay(1000);
        await RunAsync(tmux, ["-L", name, "kill-server"], check: false);
        directory.Dispose();
    }

    static async Task<string> RunAsync(string program, string[] args, bool check = true)
    {
        var start = new ProcessStartInfo(program) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var arg in args)
        {
            start.ArgumentList.Add(arg);
        }
        using var process = Process.Start(start)!;
        var output = process.StandardOutput.ReadToEndAsync();
        var error = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync();
        if (check && process.ExitCode != 0)
        {
            throw new InvalidOperationException($"{program} {string.Join(' ', args)} exited {process.ExitCode}: {await error}");
        }
        return await output;
    }
}
