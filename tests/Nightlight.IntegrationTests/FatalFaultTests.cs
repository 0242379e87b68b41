using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>
/// A fault that stops a command says why in one line and exits non-zero. Regression: a device whose data disk was full
/// exited 0 printing nothing (the host's own error line was hidden by the log levels).
/// </summary>
public class FatalFaultTests
{
    [Fact]
    public async Task A_device_whose_data_disk_is_full_exits_1_with_one_line_saying_why()
    {
        using var disk = new SmallDisk(kibibytes: 256);
        disk.Fill();
        await using var device = NightlightCli.Start("device", "--broker", $"mqtt://127.0.0.1:{Ports.Free()}", "--id", "full2",
            "--offline", "all", "--data", disk.Path, "--interval", "50ms");
        Assert.True(await device.WaitForExitAsync(TimeSpan.FromSeconds(60)), "the device kept running on a full disk:\n" + device.Describe());
        Assert.Equal(1, device.ExitCode);
        Assert.Single(device.StderrLines, l => l.StartsWith("error:", StringComparison.Ordinal));
    }
}
