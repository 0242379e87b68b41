using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>The <c>nightlight</c> .NET tool packs and installs from a local folder, as the README says.</summary>
[Trait("Speed", "Slow")]
public class PackagingTests
{
    static string RepositoryRoot()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "Nightlight.slnx")))
        {
            dir = dir.Parent;
        }
        return dir?.FullName ?? throw new InvalidOperationException("Nightlight.slnx not found above " + AppContext.BaseDirectory);
    }

    [Fact]
    public async Task The_tool_packs_installs_from_a_folder_and_runs()
    {
        var root = RepositoryRoot();
        using var work = new TempDirectory("pack");
        var feed = Path.Combine(work.Path, "feed");
        var (packCode, packOut, packErr) = await Task.Run(() => ProcessRunner.Run("dotnet",
            ["pack", Path.Combine(root, "src", "Nightlight", "Nightlight.csproj"), "-o", feed, "--nologo", "-p:Version=0.0.1-test"], TimeSpan.FromMinutes(5)));
        Assert.True(packCode == 0, packOut + packErr);
        Assert.True(File.Exists(Path.Combine(feed, "Nightlight.0.0.1-test.nupkg")), string.Join(", ", Directory.GetFiles(feed)));

        var tools = Path.Combine(work.Path, "tools");
        var (installCode, installOut, installErr) = await Task.Run(() => ProcessRunner.Run("dotnet",
            ["tool", "install", "Nightlight", "--tool-path", tools, "--add-source", feed, "--version", "0.0.1-test"], TimeSpan.FromMinutes(5)));
        Assert.True(installCode == 0, installOut + installErr);

        var (code, stdout, stderr) = await Task.Run(() => ProcessRunner.Run(Path.Combine(tools, "nightlight"), ["--help"], TimeSpan.FromMinutes(1)));
        Assert.True(code == 0, stdout + stderr);
        Assert.Contains("up", stdout);
        Assert.Contains("broker", stdout);
        Assert.Contains("device", stdout);
    }
}
