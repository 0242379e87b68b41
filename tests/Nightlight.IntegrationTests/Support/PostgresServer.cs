using Npgsql;

namespace Nightlight.Tests.Support;

/// <summary>
/// A throwaway PostgreSQL cluster (Debian <c>postgresql</c>): initdb in a temp directory, started with pg_ctl on a
/// free loopback port, stopped and deleted at the end. PostgreSQL refuses to run as root, so as root the cluster
/// belongs to the <c>postgres</c> system user the package creates and runs through runuser.
/// </summary>
public sealed class PostgresServer : IAsyncDisposable
{
    readonly TempDirectory _directory;
    readonly string _pgCtl;
    readonly bool _asPostgres;
    int _databases;

    PostgresServer(TempDirectory directory, string pgCtl, bool asPostgres, int port)
    {
        _directory = directory;
        _pgCtl = pgCtl;
        _asPostgres = asPostgres;
        Port = port;
    }

    public int Port { get; }

    public string ConnectionString(string database) => $"Host=127.0.0.1;Port={Port};Username=nightlight;Database={database};Pooling=true";

    public static async Task<PostgresServer> StartAsync()
    {
        var initdb = External.Require("initdb", "postgresql");
        var pgCtl = External.Require("pg_ctl", "postgresql");
        var asPostgres = Environment.UserName == "root";
        var directory = new TempDirectory("pg");
        var data = Path.Combine(directory.Path, "data");
        if (asPostgres)
        {
            Run("chown", ["postgres:postgres", directory.Path], asPostgres: false);
        }
        Run(initdb, ["-D", data, "-A", "trust", "-U", "nightlight", "--no-sync", "-E", "UTF8"], asPostgres);
        var log = Path.Combine(directory.Path, "log");
        var port = await Ports.RetryWhenTakenAsync(async () =>
        {
            var candidate = Ports.Free();
            try
            {
                Run(pgCtl, ["-D", data, "-l", log, "-w", "-t", "60",
                    "-o", $"-p {candidate} -k {directory.Path} -c listen_addresses=127.0.0.1 -c fsync=off", "start"], asPostgres);
            }
            catch (InvalidOperationException) when (File.Exists(log) && File.ReadAllText(log).Contains($"Is another postmaster already running on port {candidate}?", StringComparison.Ordinal))
            {
                throw new PortTakenException($"postgres: port {candidate} is already in use");
            }
            await Ports.WaitOpenAsync(candidate, TimeSpan.FromSeconds(30));
            return candidate;
        });
        return new PostgresServer(directory, pgCtl, asPostgres, port);
    }

    /// <summary>A fresh, empty database on this cluster, so tests never see each other's rows.</summary>
    public async Task<string> CreateDatabaseAsync()
    {
        var name = $"t{Interlocked.Increment(ref _databases)}_{Guid.NewGuid():N}"[..20];
        await using var connection = new NpgsqlConnection(ConnectionString("postgres"));
        await connection.OpenAsync();
        await using var command = connection.CreateCommand();
        command.CommandText = $"CREATE DATABASE {name}";
        await command.ExecuteNonQueryAsync();
        return ConnectionString(name);
    }

    /// <summary>Stops the cluster at once (as a crash would), keeping its data, until <see cref="Restart"/>.</summary>
    public void Stop() => Run(_pgCtl, ["-D", Path.Combine(_directory.Path, "data"), "-m", "immediate", "-w", "stop"], _asPostgres);

    /// <summary>Starts the cluster <see cref="Stop"/> stopped, on the same port.</summary>
    public void Restart() => Run(_pgCtl, ["-D", Path.Combine(_directory.Path, "data"), "-l", Path.Combine(_directory.Path, "log"), "-w", "-t", "60",
        "-o", $"-p {Port} -k {_directory.Path} -c listen_addresses=127.0.0.1 -c fsync=off", "start"], _asPostgres);

    static void Run(string program, string[] args, bool asPostgres)
    {
        var (file, all) = asPostgres ? ("runuser", (string[])["-u", "postgres", "--", program, .. args]) : (program, args);
        var result = ProcessRunner.Run(file, all, TimeSpan.FromSeconds(90));
        if (result.ExitCode != 0)
        {
            throw new InvalidOperationException($"{program} failed ({result.ExitCode}): {result.Stdout}\n{result.Stderr}");
        }
    }

    public async ValueTask DisposeAsync()
    {
        NpgsqlConnection.ClearAllPools();
        Run(_pgCtl, ["-D", Path.Combine(_directory.Path, "data"), "-m", "immediate", "-w", "stop"], _asPostgres);
        await Task.Yield();
        _directory.Dispose();
    }
}
