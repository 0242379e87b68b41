using System.Diagnostics;
using System.Globalization;

namespace Nightlight.Cli.Bench;

/// <summary>A process the benchmark starts (broker or server), with its CPU time and peak memory read from /proc.</summary>
sealed class ChildProcess : IAsyncDisposable
{
    readonly Process _process;
    readonly List<string> _output = [];

    ChildProcess(string name, Process process)
    {
        Name = name;
        _process = process;
    }

    public string Name { get; }

    public int Pid => _process.Id;

    public bool HasExited => _process.HasExited;

    public string RecentOutput
    {
        get
        {
            lock (_output)
            {
                return string.Join('\n', _output.TakeLast(20));
            }
        }
    }

    /// <summary>Variables this process set for itself only: removed from the environment of the processes it starts.</summary>
    static readonly List<string> OwnVariables = [];

    /// <summary>
    /// Sets <paramref name="variable"/> for this process unless it is set already; processes started here do not
    /// inherit it. For settings read once at start-up (the runtime's): call before what reads them first.
    /// </summary>
    public static void SetForThisProcessOnly(string variable, string value)
    {
        if (Environment.GetEnvironmentVariable(variable) is null)
        {
            Environment.SetEnvironmentVariable(variable, value);
            OwnVariables.Add(variable);
        }
    }

    public static ChildProcess Start(string name, string file, IEnumerable<string> args, IDictionary<string, string?>? environment = null)
    {
        var info = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var variable in OwnVariables)
        {
            info.Environment.Remove(variable);
        }
        foreach (var (variable, value) in environment ?? new Dictionary<string, string?>())
        {
            info.Environment[variable] = value;
        }
        foreach (var arg in args)
        {
            info.ArgumentList.Add(arg);
        }
        var process = Process.Start(info) ?? throw new InvalidOperationException($"could not start {file}");
        var child = new ChildProcess(name, process);
        process.OutputDataReceived += (_, e) => child.Keep(e.Data);
        process.ErrorDataReceived += (_, e) => child.Keep(e.Data);
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return child;
    }

    void Keep(string? line)
    {
        if (line is null)
        {
            return;
        }
        // Its warnings and errors show beside the bench's progress: a run that dropped or failed something says why.
        if (line.Contains(" warn: ", StringComparison.Ordinal) || line.Contains(" fail: ", StringComparison.Ordinal))
        {
            Console.Error.WriteLine($"bench | {Name}: {line}");
        }
        lock (_output)
        {
            _output.Add(line);
            if (_output.Count > 200)
            {
                _output.RemoveRange(0, 100);
            }
        }
    }

    /// <summary>Waits for an output line containing <paramref name="text"/>.</summary>
    public async Task WaitForAsync(string text, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            lock (_output)
            {
                if (_output.Any(l => l.Contains(text, StringComparison.Ordinal)))
                {
                    return;
                }
            }
            if (_process.HasExited || DateTime.UtcNow > deadline)
            {
                throw new InvalidOperationException($"{Name} did not print '{text}'{(_process.HasExited ? $" (exited {_process.ExitCode})" : "")}:\n{RecentOutput}");
            }
            await Task.Delay(50);
        }
    }

    /// <summary>CPU seconds (user + system) used so far, from /proc/PID/stat.</summary>
    public double CpuSeconds => ProcStats.CpuSeconds(Pid);

    /// <summary>Peak resident memory in MB, from /proc/PID/status (VmHWM).</summary>
    public double PeakMemoryMb => ProcStats.PeakMemoryMb(Pid);

    /// <summary>Resident memory now in MB, from /proc/PID/status (VmRSS).</summary>
    public double MemoryMb => ProcStats.MemoryMb(Pid);

    public async ValueTask DisposeAsync()
    {
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
            await _process.WaitForExitAsync();
        }
        _process.Dispose();
    }
}

/// <summary>Reads a process's CPU time and memory from /proc (Linux).</summary>
static class ProcStats
{
    static readonly double TicksPerSecond = 100; // USER_HZ is 100 on Linux for every architecture .NET runs on.

    public static double CpuSeconds(int pid)
    {
        try
        {
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            // Fields after the command name (which may contain spaces) start after the last ')'.
            var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            return (long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture)) / TicksPerSecond;
        }
        catch (IOException)
        {
            return double.NaN;
        }
    }

    /// <summary>Peak resident memory (VmHWM) in MB.</summary>
    public static double PeakMemoryMb(int pid) => StatusKb(pid, "VmHWM:") / 1024.0;

    /// <summary>Resident memory now (VmRSS) in MB.</summary>
    public static double MemoryMb(int pid) => StatusKb(pid, "VmRSS:") / 1024.0;

    static double StatusKb(int pid, string field)
    {
        try
        {
            var line = File.ReadLines($"/proc/{pid}/status").FirstOrDefault(l => l.StartsWith(field, StringComparison.Ordinal));
            return line is null ? double.NaN : long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture);
        }
        catch (IOException)
        {
            return double.NaN;
        }
    }

    /// <summary>This process's limit on open files (the soft one), from /proc/self/limits; null when unknown.</summary>
    public static long? OpenFilesLimit()
    {
        try
        {
            var line = File.ReadLines("/proc/self/limits").FirstOrDefault(l => l.StartsWith("Max open files", StringComparison.Ordinal));
            var soft = line?["Max open files".Length..].Split(' ', StringSplitOptions.RemoveEmptyEntries)[0];
            return long.TryParse(soft, NumberStyles.Integer, CultureInfo.InvariantCulture, out var limit) ? limit : null;
        }
        catch (IOException)
        {
            return null;
        }
    }
}
