using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text;

namespace Nightlight.Tests.Support;

/// <summary>
/// A real child process whose output lines are collected as they come, so a test can wait for what a user would
/// see on the terminal. Killed on dispose if still running.
/// </summary>
public sealed class ProcessRunner : IAsyncDisposable
{
    readonly Process _process;
    readonly ConcurrentQueue<string> _stdout = new();
    readonly ConcurrentQueue<string> _stderr = new();
    readonly SemaphoreSlim _changed = new(0);
    readonly TaskCompletionSource _stdoutClosed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    readonly TaskCompletionSource _stderrClosed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    TempDirectory? _ownedDirectory;

    ProcessRunner(Process process)
    {
        _process = process;
    }

    public string Name { get; private init; } = "";

    public IReadOnlyCollection<string> StdoutLines => _stdout;

    public IReadOnlyCollection<string> StderrLines => _stderr;

    public string Stdout => string.Join('\n', _stdout);

    public string Stderr => string.Join('\n', _stderr);

    public int Id => _process.Id;

    public bool HasExited => _process.HasExited;

    public static ProcessRunner Start(string file, IEnumerable<string> args, IDictionary<string, string>? environment = null, string? workingDirectory = null)
    {
        var info = new ProcessStartInfo(file)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
            StandardOutputEncoding = Encoding.UTF8,
            StandardErrorEncoding = Encoding.UTF8,
            WorkingDirectory = workingDirectory ?? AppContext.BaseDirectory,
        };
        foreach (var arg in args)
        {
            info.ArgumentList.Add(arg);
        }
        info.Environment["DOTNET_NOLOGO"] = "1";
        foreach (var (key, value) in environment ?? new Dictionary<string, string>())
        {
            info.Environment[key] = value;
        }
        var process = new Process { StartInfo = info, EnableRaisingEvents = true };
        var runner = new ProcessRunner(process) { Name = Path.GetFileName(file) + " " + string.Join(' ', args) };
        process.OutputDataReceived += (_, e) => runner.OnLine(runner._stdout, runner._stdoutClosed, e.Data);
        process.ErrorDataReceived += (_, e) => runner.OnLine(runner._stderr, runner._stderrClosed, e.Data);
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return runner;
    }

    /// <summary>Runs a program to the end and returns its exit code and output.</summary>
    public static (int ExitCode, string Stdout, string Stderr) Run(string file, IEnumerable<string> args, TimeSpan timeout)
    {
        var runner = Start(file, args);
        var exited = runner.WaitForExitAsync(timeout).GetAwaiter().GetResult();
        var result = (exited ? runner._process.ExitCode : -1, runner.Stdout, runner.Stderr);
        runner.DisposeAsync().AsTask().GetAwaiter().GetResult();
        return result;
    }

    void OnLine(ConcurrentQueue<string> lines, TaskCompletionSource closed, string? line)
    {
        if (line is null)
        {
            closed.TrySetResult();
        }
        else
        {
            lines.Enqueue(line);
        }
        _changed.Release();
    }

    /// <summary>Writes one line to the process's standard input, as a user typing it.</summary>
    public async Task TypeAsync(string line)
    {
        await _process.StandardInput.WriteLineAsync(line);
        await _process.StandardInput.FlushAsync();
    }

    /// <summary>Waits for a standard-output line that contains <paramref name="text"/>; fails with the output so far.</summary>
    public Task<string> WaitForLineAsync(string text, TimeSpan? timeout = null) =>
        WaitForAsync(() => _stdout, line => line.Contains(text, StringComparison.Ordinal), $"a line containing '{text}'", timeout);

    /// <summary>Waits for a standard-error line that contains <paramref name="text"/>.</summary>
    public Task<string> WaitForErrorLineAsync(string text, TimeSpan? timeout = null) =>
        WaitForAsync(() => _stderr, line => line.Contains(text, StringComparison.Ordinal), $"a log line containing '{text}'", timeout);

    /// <summary>Waits until <paramref name="count"/> stdout lines match.</summary>
    public async Task WaitForCountAsync(Func<string, bool> match, int count, string what, TimeSpan? timeout = null)
    {
        var deadline = DateTime.UtcNow + (timeout ?? TimeSpan.FromSeconds(20));
        while (_stdout.Count(match) < count)
        {
            if (DateTime.UtcNow > deadline)
            {
                Assert.Fail($"{Name}: waited for {count} × {what}, saw {_stdout.Count(match)}.\n{Describe()}");
            }
            await _changed.WaitAsync(TimeSpan.FromMilliseconds(200));
        }
    }

    async Task<string> WaitForAsync(Func<IEnumerable<string>> source, Func<string, bool> match, string what, TimeSpan? timeout)
    {
        var deadline = DateTime.UtcNow + (timeout ?? TimeSpan.FromSeconds(20));
        while (true)
        {
            var found = source().FirstOrDefault(match);
            if (found is not null)
            {
                return found;
            }
            if (DateTime.UtcNow > deadline || (_process.HasExited && _stdoutClosed.Task.IsCompleted && _stderrClosed.Task.IsCompleted))
            {
                Assert.Fail($"{Name}: waited for {what}.\n{Describe()}");
            }
            await _changed.WaitAsync(TimeSpan.FromMilliseconds(200));
        }
    }

    public string Describe() =>
        $"exited: {(_process.HasExited ? _process.ExitCode.ToString(System.Globalization.CultureInfo.InvariantCulture) : "no")}\n--- stdout ---\n{Tail(_stdout)}\n--- stderr ---\n{Tail(_stderr)}";

    static string Tail(IEnumerable<string> lines) => string.Join('\n', lines.TakeLast(40));

    public async Task<bool> WaitForExitAsync(TimeSpan timeout)
    {
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            await _process.WaitForExitAsync(cts.Token);
            await Task.WhenAll(_stdoutClosed.Task, _stderrClosed.Task).WaitAsync(TimeSpan.FromSeconds(5));
            return true;
        }
        catch (OperationCanceledException)
        {
            return false;
        }
    }

    public int ExitCode => _process.ExitCode;

    /// <summary>Sends a signal, as Ctrl+C (INT) or a service manager (TERM) would.</summary>
    /// <summary>SIGKILL from this process, at once (no kill(1) to start first): for "right after" a packet arrived.</summary>
    public void KillNow() => _process.Kill();

    public void Signal(string signal = "INT")
    {
        using var kill = Process.Start("kill", ["-" + signal, _process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
        kill.WaitForExit();
    }

    /// <summary>A directory made for this process alone (its data directory), deleted once the process is gone.</summary>
    public void DeleteOnDispose(TempDirectory directory) => _ownedDirectory = directory;

    /// <summary>
    /// Waits with <paramref name="ready"/> for the process to get where the caller needs it (ready, or run to a good end);
    /// if it never does, stops it (and <paramref name="alsoStop"/>) before the failure goes on, so a test that fails in
    /// its set-up leaves no process running after the test run.
    /// </summary>
    public async Task StopIfNotReadyAsync(Func<ProcessRunner, Task> ready, params IAsyncDisposable?[] alsoStop)
    {
        try
        {
            await ready(this);
        }
        catch
        {
            await DisposeAsync();
            foreach (var other in alsoStop)
            {
                if (other is not null)
                {
                    await other.DisposeAsync();
                }
            }
            throw;
        }
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            if (!_process.HasExited)
            {
                _process.Kill(entireProcessTree: true);
                await _process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(10));
            }
        }
        catch (InvalidOperationException)
        {
            // Never started or already reaped.
        }
        _process.Dispose();
        _ownedDirectory?.Dispose();
    }
}
