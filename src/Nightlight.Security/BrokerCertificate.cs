using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Nightlight.Security;

/// <summary>
/// The TLS certificate of the broker: from files (PEM certificate + key, or PFX), or a self-signed development
/// certificate kept in the data directory (<c>dev-broker.pem</c> for clients to trust, <c>dev-broker.pfx</c> with
/// the key, readable by its owner only), made once and reused until a month before it expires.
/// </summary>
public static class BrokerCertificate
{
    public const string DevelopmentCertificateFile = "dev-broker.pem";
    public const string DevelopmentKeyFile = "dev-broker.pfx";

    /// <summary>Loads <paramref name="certificatePath"/>: a PFX (with <paramref name="password"/>) or a PEM with <paramref name="keyPath"/> (or the key inside).</summary>
    public static X509Certificate2 Load(string certificatePath, string? keyPath, string? password)
    {
        var extension = Path.GetExtension(certificatePath).ToLowerInvariant();
        if (extension is ".pfx" or ".p12")
        {
            return X509CertificateLoader.LoadPkcs12FromFile(certificatePath, password);
        }
        var pem = string.IsNullOrEmpty(password)
            ? X509Certificate2.CreateFromPemFile(certificatePath, keyPath)
            : X509Certificate2.CreateFromEncryptedPemFile(certificatePath, password, keyPath);
        // SslStream on Linux wants a certificate whose key is not ephemeral; a PKCS#12 round trip gives it one.
        return X509CertificateLoader.LoadPkcs12(pem.Export(X509ContentType.Pkcs12), null);
    }

    /// <summary>The development certificate in <paramref name="dataDirectory"/>; <paramref name="created"/> when it was just made.</summary>
    public static X509Certificate2 Development(string dataDirectory, out bool created)
    {
        var pfx = Path.Combine(dataDirectory, DevelopmentKeyFile);
        var pem = Path.Combine(dataDirectory, DevelopmentCertificateFile);
        if (File.Exists(pfx) && File.Exists(pem))
        {
            var existing = X509CertificateLoader.LoadPkcs12FromFile(pfx, null);
            if (existing.NotAfter > DateTime.Now.AddDays(30))
            {
                created = false;
                return existing;
            }
        }
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest("CN=Nightlight development broker", key, HashAlgorithmName.SHA256);
        var names = new SubjectAlternativeNameBuilder();
        names.AddDnsName("localhost");
        names.AddDnsName(Environment.MachineName);
        names.AddIpAddress(IPAddress.Loopback);
        names.AddIpAddress(IPAddress.IPv6Loopback);
        request.CertificateExtensions.Add(names.Build());
        // Self-signed and used as its own trust anchor (mosquitto_pub --cafile), so it is marked as a CA too.
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature | X509KeyUsageFlags.KeyCertSign, true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.1")], false));
        using var certificate = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddYears(1));
        DataDirectory.WritePrivateFile(pfx, certificate.Export(X509ContentType.Pkcs12));
        Directory.CreateDirectory(dataDirectory);
        File.WriteAllText(pem, certificate.ExportCertificatePem() + "\n");
        created = true;
        return X509CertificateLoader.LoadPkcs12FromFile(pfx, null);
    }
}
