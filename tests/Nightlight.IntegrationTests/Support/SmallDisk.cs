namespace Nightlight.Tests.Support;

/// <summary>
/// A real file system of a few hundred KiB (tmpfs, mounted by the test), so a test can fill the disk and free it
/// again. Needs root and mount(8): skipped without them unless NIGHTLIGHT_REQUIRE_EXTERNAL is set (CI runs as root).
/// </summary>
public sealed class SmallDisk : IDisposable
{
    readonly TempDirectory _mountPoint = new("disk");
    bool _mounted;

    public SmallDisk(int kibibytes)
    {
        var mount = External.Require("mount", "mount");
        if (Environment.UserName != "root")
        {
            if (External.Required)
            {
                Assert.Fail("mounting a small disk needs root and NIGHTLIGHT_REQUIRE_EXTERNAL is set");
            }
            Assert.Skip("mounting a small disk needs root");
        }
        var (code, _, error) = ProcessRunner.Run(mount, ["-t", "tmpfs", "-o", $"size={kibibytes}k,mode=700", "tmpfs", _mountPoint.Path], TimeSpan.FromSeconds(20));
        Assert.True(code == 0, $"mount tmpfs failed: {error}");
        _mounted = true;
    }

    public string Path => _mountPoint.Path;

    /// <summary>Takes all the free space with a file, until <see cref="Free"/>.</summary>
    public void Fill()
    {
        using var filler = new FileStream(System.IO.Path.Combine(Path, "filler"), FileMode.Append);
        var block = new byte[4096];
        try
        {
            while (true)
            {
                filler.Write(block);
                filler.Flush();
            }
        }
        catch (IOException)
        {
            // Full.
        }
    }

    /// <summary>Gives back the space <see cref="Fill"/> took.</summary>
    public void Free() => File.Delete(System.IO.Path.Combine(Path, "filler"));

    public void Dispose()
    {
        if (_mounted)
        {
            ProcessRunner.Run("umount", ["-l", _mountPoint.Path], TimeSpan.FromSeconds(20));
            _mounted = false;
        }
        _mountPoint.Dispose();
    }
}
