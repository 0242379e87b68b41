namespace Nightlight.Tests.Support;

/// <summary>
/// A directory for one test's files (a data directory, a configuration, an output file), deleted on dispose: dispose it
/// only after every process using it has stopped. All of them live in one directory of this test run,
/// <c>nightlight-tests-*</c> in /tmp (or TMPDIR), deleted when the test process exits, so a test that fails before
/// its cleanup leaves nothing behind either. The directory of a run that crashed is left alone.
/// </summary>
public sealed class TempDirectory : IDisposable, IAsyncDisposable
{
    const UnixFileMode OwnerOnly = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute;

    static readonly Lazy<string> Run = new(StartRun);

    /// <summary>Makes <c>NAME-XXXXXXXX</c> in this run's directory, readable only by its owner.</summary>
    public TempDirectory(string name)
    {
        Path = System.IO.Path.Combine(Run.Value, $"{name}-{System.IO.Path.GetRandomFileName().Replace(".", "", StringComparison.Ordinal)}");
        if (OperatingSystem.IsWindows())
        {
            Directory.CreateDirectory(Path);
        }
        else
        {
            Directory.CreateDirectory(Path, OwnerOnly);
        }
    }

    public string Path { get; }

    public void Dispose() => Delete(Path);

    /// <summary>The same as <see cref="Dispose"/>, for callers that stop processes and directories alike.</summary>
    public ValueTask DisposeAsync()
    {
        Dispose();
        return ValueTask.CompletedTask;
    }

    static string StartRun()
    {
        var run = Directory.CreateTempSubdirectory("nightlight-tests-").FullName;
        if (!OperatingSystem.IsWindows())
        {
            // Others may pass through, not list: the PostgreSQL cluster's directory belongs to the postgres user.
            File.SetUnixFileMode(run, OwnerOnly | UnixFileMode.GroupExecute | UnixFileMode.OtherExecute);
        }
        AppDomain.CurrentDomain.ProcessExit += (_, _) => Delete(run);
        return run;
    }

    /// <summary>
    /// Deletes a directory tree, retrying briefly (a process that just stopped may still be closing a file). Never
    /// throws, so a cleanup cannot hide a test's own failure; a directory left behind is one line on stderr and a
    /// warning on the test that was running.
    /// </summary>
    static void Delete(string path)
    {
        for (var attempt = 1; ; attempt++)
        {
            try
            {
                if (Directory.Exists(path))
                {
                    Directory.Delete(path, recursive: true);
                }
                return;
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                if (attempt == 5)
                {
                    var line = $"Nightlight.Tests: could not delete {path}: {e.Message}";
                    Console.Error.WriteLine(line);
                    // Inside a test, also on its result, where `dotnet test` shows it.
                    TestContext.Current.AddWarning(line);
                    return;
                }
                Thread.Sleep(200);
            }
        }
    }
}
