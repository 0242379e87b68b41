namespace Nightlight.Tests.Support;

/// <summary>
/// Finds the real programs the tests talk to. A missing program skips the test, unless
/// NIGHTLIGHT_REQUIRE_EXTERNAL is set (CI sets it), in which case the test fails: nothing skips in CI.
/// </summary>
public static class External
{
    static readonly string[] ExtraDirectories = ["/usr/sbin", "/usr/local/sbin", "/usr/lib/postgresql/15/bin"];

    public static bool Required => !string.IsNullOrEmpty(Environment.GetEnvironmentVariable("NIGHTLIGHT_REQUIRE_EXTERNAL"));

    /// <summary>The full path of <paramref name="program"/>, or skips/fails the test when it is not installed.</summary>
    public static string Require(string program, string package)
    {
        if (Find(program) is { } path)
        {
            return path;
        }
        var message = $"{program} is not installed (Debian package {package})";
        if (Required)
        {
            Assert.Fail(message + " and NIGHTLIGHT_REQUIRE_EXTERNAL is set");
        }
        Assert.Skip(message);
        return "";
    }

    public static string? Find(string program)
    {
        if (Path.IsPathRooted(program))
        {
            return File.Exists(program) ? program : null;
        }
        var path = Environment.GetEnvironmentVariable("PATH") ?? "";
        return path.Split(':', StringSplitOptions.RemoveEmptyEntries).Concat(ExtraDirectories)
            .Select(dir => Path.Combine(dir, program))
            .FirstOrDefault(File.Exists);
    }

    /// <summary>Debian's python3 with Debian's paho-mqtt 1.6 (the lesson's client library).</summary>
    public static string RequirePahoPython()
    {
        const string python = "/usr/bin/python3";
        var found = File.Exists(python) && ProcessRunner.Run(python, ["-c", "import paho.mqtt.client"], TimeSpan.FromSeconds(20)).ExitCode == 0;
        if (found)
        {
            return python;
        }
        var message = "/usr/bin/python3 with paho-mqtt is not installed (Debian package python3-paho-mqtt)";
        if (Required)
        {
            Assert.Fail(message + " and NIGHTLIGHT_REQUIRE_EXTERNAL is set");
        }
        Assert.Skip(message);
        return "";
    }
}
