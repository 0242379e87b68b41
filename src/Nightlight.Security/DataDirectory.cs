using Microsoft.Extensions.Configuration;

namespace Nightlight.Security;

/// <summary>The data directory (<c>Data:Directory</c>, flag <c>--data</c>, default <c>./nightlight-data</c>).</summary>
public static class DataDirectory
{
    public const string Key = "Data:Directory";
    public const string Default = "nightlight-data";

    public static string Resolve(IConfiguration configuration)
    {
        var configured = configuration[Key];
        return Path.GetFullPath(string.IsNullOrWhiteSpace(configured) ? Default : configured);
    }

    /// <summary>Creates <paramref name="path"/> (and missing parents) readable only by its owner (0700), whatever the umask.</summary>
    public static void CreatePrivate(string path)
    {
        if (OperatingSystem.IsWindows() || Directory.Exists(path))
        {
            Directory.CreateDirectory(path);
            return;
        }
        Directory.CreateDirectory(path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
    }

    /// <summary>Writes a file only its owner can read (secrets, private keys), creating the directory first.</summary>
    public static void WritePrivateFile(string path, ReadOnlySpan<byte> content)
    {
        CreatePrivate(Path.GetDirectoryName(path)!);
        var temporary = path + ".tmp";
        var options = new FileStreamOptions { Mode = FileMode.Create, Access = FileAccess.Write };
        if (!OperatingSystem.IsWindows())
        {
            options.UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
        }
        using (var stream = new FileStream(temporary, options))
        {
            stream.Write(content);
            stream.Flush(flushToDisk: true);
        }
        // Rename so a broker reading the file never sees half of it.
        File.Move(temporary, path, overwrite: true);
    }
}
