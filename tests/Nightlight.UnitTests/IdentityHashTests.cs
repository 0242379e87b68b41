using System.Security.Cryptography;
using System.Text;
using Nightlight.Security;

namespace Nightlight.Tests;

/// <summary>Identity secrets are checked with a cheap HMAC; older PBKDF2 entries still verify and are upgraded (issue 29).</summary>
public class IdentityHashTests : IDisposable
{
    readonly string _directory = Directory.CreateTempSubdirectory("nightlight-ids-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    [Fact]
    public async Task New_secrets_are_stored_as_hmac_and_a_wrong_one_costs_microseconds()
    {
        var identities = DeviceIdentities.InDirectory(_directory);
        var secret = identities.Add("kitchen", IdentityRole.Device);
        Assert.Contains(DeviceIdentities.HmacScheme, File.ReadAllText(identities.FilePath));
        Assert.True(await identities.VerifyAsync("kitchen", Encoding.UTF8.GetBytes(secret), default));

        var started = System.Diagnostics.Stopwatch.StartNew();
        for (var i = 0; i < 1000; i++)
        {
            Assert.False(await identities.VerifyAsync("kitchen", Encoding.UTF8.GetBytes("wrong-" + i), default));
        }
        // PBKDF2 with 100,000 iterations took about 25 ms a check on the 2-core machine: 1,000 took 25 s.
        Assert.True(started.Elapsed < TimeSpan.FromSeconds(2), $"1,000 wrong secrets took {started.Elapsed}");
    }

    [Fact]
    public async Task An_older_pbkdf2_entry_still_verifies_and_is_rewritten_as_hmac()
    {
        const string secret = "an-older-secret-written-by-a-previous-version";
        var salt = RandomNumberGenerator.GetBytes(16);
        var hash = Rfc2898DeriveBytes.Pbkdf2(Encoding.UTF8.GetBytes(secret), salt, 1000, HashAlgorithmName.SHA256, 32);
        var path = Path.Combine(_directory, DeviceIdentities.FileName);
        File.WriteAllText(path, $$"""
            {"version": 1, "identities": {"porch": {"role": "device", "salt": "{{Convert.ToBase64String(salt)}}",
              "hash": "{{Convert.ToBase64String(hash)}}", "iterations": 1000, "created": "2026-01-01T00:00:00+00:00", "rotated": null} } }
            """);
        var identities = new DeviceIdentities(path);

        Assert.False(await identities.VerifyAsync("porch", Encoding.UTF8.GetBytes("wrong"), default));
        Assert.DoesNotContain(DeviceIdentities.HmacScheme, File.ReadAllText(path));
        Assert.True(await identities.VerifyAsync("porch", Encoding.UTF8.GetBytes(secret), default));
        var upgraded = File.ReadAllText(path);
        Assert.Contains(DeviceIdentities.HmacScheme, upgraded);
        Assert.DoesNotContain(Convert.ToBase64String(hash), upgraded);

        var reread = new DeviceIdentities(path);
        Assert.True(await reread.VerifyAsync("porch", Encoding.UTF8.GetBytes(secret), default));
        Assert.False(await reread.VerifyAsync("porch", Encoding.UTF8.GetBytes("wrong"), default));
    }

    [Fact]
    public void Failures_back_off_per_address_and_per_identity_up_to_the_cap()
    {
        var backoff = new FailureBackoff();
        for (var i = 0; i < FailureBackoff.FreeFailures; i++)
        {
            Assert.Equal(TimeSpan.Zero, backoff.Fail("203.0.113.7", "kitchen"));
        }
        Assert.Equal(TimeSpan.FromMilliseconds(100), backoff.Fail("203.0.113.7", "kitchen"));
        Assert.Equal(TimeSpan.FromMilliseconds(200), backoff.Fail("203.0.113.7", "other"));
        // Another address guessing at the same identity waits too; an unrelated address and identity do not.
        Assert.True(backoff.Fail("198.51.100.1", "kitchen") > TimeSpan.Zero);
        Assert.Equal(TimeSpan.Zero, backoff.Fail("198.51.100.2", "hall"));
        for (var i = 0; i < 50; i++)
        {
            backoff.Fail("203.0.113.7", null);
        }
        Assert.Equal(FailureBackoff.MaxDelay, backoff.Fail("203.0.113.7", null));
    }
}
