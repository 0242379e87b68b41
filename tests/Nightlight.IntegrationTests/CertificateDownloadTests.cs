using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using Nightlight.Security;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>
/// Regression (issue 29): a client certificate naming an authorityInfoAccess URL made the broker fetch it before
/// refusing, and hold the CONNECT for 30 s when that URL never answered. The attacker's certificate here names a
/// loopback listener that counts what reaches it and would serve the missing intermediate certificate, so a broker
/// that downloads would even let the attacker in.
/// </summary>
[System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
public class CertificateDownloadTests
{
    /// <summary>A loopback HTTP server that counts every connection and answers each request with <see cref="Body"/>.</summary>
    sealed class CountingListener : IAsyncDisposable
    {
        readonly TcpListener _listener = new(IPAddress.Loopback, 0);
        readonly CancellationTokenSource _stop = new();
        readonly Task _serving;
        int _connections;

        public CountingListener()
        {
            _listener.Start();
            _serving = Task.Run(ServeAsync);
        }

        public byte[] Body { get; set; } = [];

        public int Connections => Volatile.Read(ref _connections);

        public string Url(string path) => $"http://127.0.0.1:{((IPEndPoint)_listener.LocalEndpoint).Port}/{path}";

        async Task ServeAsync()
        {
            while (!_stop.IsCancellationRequested)
            {
                TcpClient client;
                try
                {
                    client = await _listener.AcceptTcpClientAsync(_stop.Token);
                }
                catch (OperationCanceledException)
                {
                    return;
                }
                Interlocked.Increment(ref _connections);
                _ = Task.Run(async () =>
                {
                    using (client)
                    {
                        var stream = client.GetStream();
                        _ = await stream.ReadAsync(new byte[4096]); // The request itself does not matter, only that it came.
                        await stream.WriteAsync(Encoding.ASCII.GetBytes(
                            $"HTTP/1.1 200 OK\r\nContent-Type: application/pkix-cert\r\nContent-Length: {Body.Length}\r\nConnection: close\r\n\r\n"));
                        await stream.WriteAsync(Body);
                    }
                });
            }
        }

        public async ValueTask DisposeAsync()
        {
            await _stop.CancelAsync();
            _listener.Stop();
            await _serving;
            _stop.Dispose();
        }
    }

    /// <summary>A certificate signed by <paramref name="issuer"/>, naming <paramref name="urls"/>'s listener for its issuer, OCSP and CRL.</summary>
    static X509Certificate2 Sign(string subject, X509Certificate2 issuer, bool authority, CountingListener urls, out ECDsa key)
    {
        key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest($"CN={subject}", key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(authority, false, 0, true));
        if (authority)
        {
            request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        }
        else
        {
            request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.2")], false));
        }
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
        request.CertificateExtensions.Add(X509AuthorityKeyIdentifierExtension.CreateFromCertificate(issuer, true, false));
        request.CertificateExtensions.Add(new X509AuthorityInformationAccessExtension([urls.Url("ocsp")], [urls.Url("issuer.cer")]));
        request.CertificateExtensions.Add(CertificateRevocationListBuilder.BuildCrlDistributionPointExtension([urls.Url("revoked.crl")]));
        return request.Create(issuer, DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(authority ? 30 : 20), RandomNumberGenerator.GetBytes(16));
    }

    [Fact]
    public async Task A_client_certificate_naming_urls_makes_the_broker_fetch_nothing_and_is_refused_at_once()
    {
        await using var urls = new CountingListener();
        using var data = new DataDir();
        // The device CA the broker trusts (made by the real command), and an intermediate under it that the client keeps to itself.
        Assert.Equal(0, data.Devices("add", "seed2", "--cert").ExitCode);
        using var authority = X509CertificateLoader.LoadPkcs12FromFile(Path.Combine(data.Path, DeviceCertificateAuthority.KeyFile), null);
        using var intermediate = Sign("Attacker intermediate", authority, authority: true, urls, out var intermediateKey);
        using var intermediateWithKey = intermediate.CopyWithPrivateKey(intermediateKey);
        using var leaf = Sign("aia1", intermediateWithKey, authority: false, urls, out var leafKey);
        urls.Body = intermediate.RawData;
        // Allowed by thumbprint, so only the chain (which needs the downloaded intermediate) stands between it and a session.
        DeviceIdentities.InDirectory(data.Path).AddCertificate("aia1", DeviceCertificateAuthority.Thumbprint(leaf), leaf.NotAfter);
        // The attacker's client is mosquitto_pub (OpenSSL): it fetches nothing itself, so every fetch counted is the broker's.
        using var leafKeyPem = leafKey;
        var leafPem = Path.Combine(data.Path, "aia1.pem");
        var leafKeyPath = Path.Combine(data.Path, "aia1.key");
        await File.WriteAllTextAsync(leafPem, leaf.ExportCertificatePem() + "\n");
        await File.WriteAllTextAsync(leafKeyPath, leafKey.ExportPkcs8PrivateKeyPem() + "\n");
        var pub = External.Require("mosquitto_pub", "mosquitto-clients");

        var tlsPort = Ports.Free();
        var (broker, _, _) = await NightlightCli.StartBrokerAsync("--data", data.Path, "--tls-port", tlsPort.ToString(System.Globalization.CultureInfo.InvariantCulture));
        await using (broker)
        {
            var clock = System.Diagnostics.Stopwatch.StartNew();
            var (code, stdout, stderr) = await Task.Run(() => ProcessRunner.Run(pub, ["-h", "localhost", "-p", tlsPort.ToString(System.Globalization.CultureInfo.InvariantCulture),
                "--cafile", Path.Combine(data.Path, "dev-broker.pem"), "--cert", leafPem, "--key", leafKeyPath, "-i", "aia1", "-V", "mqttv5", "-q", "1",
                "-t", "aia1/telemetry", "-m", "{\"light\": 1}"], TimeSpan.FromSeconds(30)));
            Assert.True(code != 0, $"the attacker's certificate was accepted: {stdout} {stderr}");
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(10), $"the refusal took {clock.Elapsed.TotalSeconds:F1} s");
            await broker.WaitForErrorLineAsync("not signed by the device CA", TimeSpan.FromSeconds(20));
            await Task.Delay(500);
            Assert.Equal(0, urls.Connections);
        }
    }
}
