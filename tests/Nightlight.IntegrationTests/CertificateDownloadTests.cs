using System.Diagnostics;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using Nightlight.Security;
using Nightlight.Tests.Support;

namespace Nightlight.Tests;

/// <summary>
/// Regression (issue 29): a client certificate naming an authorityInfoAccess URL made the broker fetch it before
/// refusing, and hold the CONNECT for 30 s when that URL never answered; a broker's certificate did the same to our
/// devices and servers. The attacker's certificates here name a loopback listener that counts what reaches it.
/// </summary>
[System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
public class CertificateDownloadTests
{
    /// <summary>
    /// A loopback HTTP server that counts every connection and answers each request with <see cref="Body"/>, or, when
    /// <see cref="Silent"/>, never answers and holds the connection open as an unreachable URL would.
    /// </summary>
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

        public bool Silent { get; init; }

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
                        if (Silent)
                        {
                            await Task.Delay(Timeout.Infinite, _stop.Token).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
                            return;
                        }
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

    /// <summary>
    /// A certificate signed by <paramref name="issuer"/>, naming <paramref name="urls"/>'s listener for its issuer, OCSP
    /// and CRL: a CA, a client's certificate, or with <paramref name="serverName"/> a server's for that address.
    /// </summary>
    static X509Certificate2 Sign(string subject, X509Certificate2 issuer, bool authority, CountingListener urls, out ECDsa key, string? serverName = null)
    {
        key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest($"CN={subject}", key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(authority, false, 0, true));
        if (authority)
        {
            request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        }
        else if (serverName is not null)
        {
            request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.1")], false));
            var names = new SubjectAlternativeNameBuilder();
            names.AddIpAddress(IPAddress.Parse(serverName));
            request.CertificateExtensions.Add(names.Build());
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

    /// <summary>
    /// A TLS listener on loopback that presents <paramref name="certificate"/> alone, without its issuer, as a broker
    /// whose certificate a client can only check by downloading that issuer. It speaks no MQTT.
    /// </summary>
    sealed class HostileTlsBroker : IAsyncDisposable
    {
        readonly TcpListener _listener = new(IPAddress.Loopback, 0);
        readonly CancellationTokenSource _stop = new();
        readonly SslStreamCertificateContext _context;
        readonly Task _serving;
        long _firstHandshake;

        public HostileTlsBroker(X509Certificate2 certificate)
        {
            // Offline: the listener itself must not fetch what its certificate names, or it would count as the client's.
            _context = SslStreamCertificateContext.Create(certificate, null, offline: true);
            _listener.Start();
            _serving = Task.Run(ServeAsync);
        }

        public int Port => ((IPEndPoint)_listener.LocalEndpoint).Port;

        /// <summary>When the first client's TLS handshake began (a <see cref="Stopwatch"/> timestamp), or 0.</summary>
        public long FirstHandshake => Interlocked.Read(ref _firstHandshake);

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
                Interlocked.CompareExchange(ref _firstHandshake, Stopwatch.GetTimestamp(), 0);
                _ = Task.Run(async () =>
                {
                    using (client)
                    await using (var tls = new SslStream(client.GetStream()))
                    {
                        try
                        {
                            await tls.AuthenticateAsServerAsync(new SslServerAuthenticationOptions { ServerCertificateContext = _context }, _stop.Token);
                            _ = await tls.ReadAsync(new byte[1024], _stop.Token);
                        }
                        catch (Exception e) when (e is IOException or AuthenticationException or OperationCanceledException)
                        {
                            // The client refused the certificate, as it should.
                        }
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

    [Theory]
    [InlineData("device", "mqtts")]
    [InlineData("device", "wss")]
    [InlineData("server", "mqtts")]
    [InlineData("device", "https")]
    public async Task A_broker_certificate_naming_urls_makes_the_client_fetch_nothing_and_refuse_it_at_once(string role, string scheme)
    {
        await using var urls = new CountingListener { Silent = true };
        using var rootKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var rootRequest = new CertificateRequest("CN=Nightlight test root", rootKey, HashAlgorithmName.SHA256);
        rootRequest.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        rootRequest.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        rootRequest.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(rootRequest.PublicKey, false));
        using var root = rootRequest.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-2), DateTimeOffset.UtcNow.AddDays(60));
        // The broker's certificate is issued by an intermediate the client is never given: only a download would find it.
        using var intermediate = Sign("Hostile intermediate", root, authority: true, urls, out var intermediateKey);
        using var intermediateWithKey = intermediate.CopyWithPrivateKey(intermediateKey);
        using var leaf = Sign("Hostile broker", intermediateWithKey, authority: false, urls, out var leafKey, serverName: "127.0.0.1");
        using var leafWithKey = leaf.CopyWithPrivateKey(leafKey);
        // SslStream on Linux wants a key that is not ephemeral; a PKCS#12 round trip gives it one.
        using var served = X509CertificateLoader.LoadPkcs12(leafWithKey.Export(X509ContentType.Pkcs12), null);
        intermediateKey.Dispose();
        leafKey.Dispose();
        using var directory = new DataDir();
        var rootPem = Path.Combine(directory.Path, "root.pem");
        await File.WriteAllTextAsync(rootPem, root.ExportCertificatePem() + "\n");

        await using var broker = new HostileTlsBroker(served);
        var address = scheme switch
        {
            "wss" => $"wss://127.0.0.1:{broker.Port}/mqtt",
            "https" => $"https://127.0.0.1:{broker.Port}/",
            _ => $"mqtts://127.0.0.1:{broker.Port}",
        };
        // The device trusts the root the intermediate chains to; a server (and the device over HTTP) has no CA option
        // and trusts the system's store.
        await using var client = (role, scheme) switch
        {
            ("device", "https") => NightlightCli.Start("device", "--transport", "http", "--server", address, "--id", "aia2", "--interval", "200ms", "--light", "5"),
            ("device", _) => NightlightCli.Start("device", "--broker", address, "--cafile", rootPem, "--id", "aia2", "--interval", "200ms", "--light", "5"),
            _ => NightlightCli.Start("server", "--broker", address),
        };

        var refusing = RefusalAsync(client, broker);
        // Long enough for a client that downloads to have asked (and to be still waiting for an answer).
        await Task.WhenAny(refusing, Task.Delay(TimeSpan.FromSeconds(15)));
        await Task.Delay(1000);
        Assert.Equal(0, urls.Connections);
        var (refusal, took) = await refusing;
        Assert.True(took < TimeSpan.FromSeconds(5), $"the refusal took {took.TotalSeconds:F1} s after the handshake began: {refusal}");
        Assert.Contains($"127.0.0.1:{broker.Port}", refusal, StringComparison.Ordinal);
        Assert.DoesNotContain(client.StderrLines, l => l.Contains("connected to", StringComparison.Ordinal));
    }

    /// <summary>The client's log line refusing the broker's certificate, and how long after the first handshake began it came.</summary>
    static async Task<(string Line, TimeSpan Took)> RefusalAsync(ProcessRunner client, HostileTlsBroker broker)
    {
        var line = await client.WaitForErrorLineAsync("cannot verify the TLS certificate of", TimeSpan.FromSeconds(60));
        return (line, Stopwatch.GetElapsedTime(broker.FirstHandshake));
    }
}
