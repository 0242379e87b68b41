using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Nightlight.Security;

/// <summary>A device certificate as issued: where its files are and what identifies it.</summary>
/// <param name="CertificatePath">PEM certificate (public).</param>
/// <param name="KeyPath">PEM private key (mode 0600).</param>
/// <param name="Thumbprint">SHA-256 of the certificate, hex; what the identities file allows.</param>
/// <param name="NotAfter">Last moment it is valid.</param>
public sealed record IssuedCertificate(string CertificatePath, string KeyPath, string Thumbprint, DateTimeOffset NotAfter);

/// <summary>
/// The local certificate authority that signs device certificates: <c>device-ca.pem</c> (public; the broker checks
/// client certificates against it) and <c>device-ca.pfx</c> (with the key, owner-only) in the data directory, made on
/// first use. A device certificate's subject CN is the device id; the broker accepts it only while its thumbprint is
/// listed for that device in <c>identities.json</c>, so revoking is removing it from there.
/// </summary>
public sealed class DeviceCertificateAuthority
{
    public const string CertificateFile = "device-ca.pem";
    public const string KeyFile = "device-ca.pfx";

    readonly string _directory;
    readonly Lock _gate = new();
    (DateTime Written, X509Certificate2? Certificate) _loaded;

    public DeviceCertificateAuthority(string dataDirectory) => _directory = dataDirectory;

    /// <summary>Path of the CA certificate, which exists once a device certificate was issued.</summary>
    public string CertificatePath => Path.Combine(_directory, CertificateFile);

    /// <summary>Issues a certificate for <paramref name="deviceId"/>, valid from <paramref name="notBefore"/> to <paramref name="notAfter"/>, into <paramref name="outputDirectory"/>.</summary>
    public IssuedCertificate Issue(string deviceId, string outputDirectory, DateTimeOffset notBefore, DateTimeOffset notAfter)
    {
        if (!Nightlight.Protocol.Topics.IsValidDeviceId(deviceId))
        {
            throw new ArgumentException($"'{deviceId}' is not a valid device id");
        }
        using var authority = LoadOrCreateAuthority();
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var subject = new X500DistinguishedNameBuilder();
        subject.AddOrganizationName("Nightlight device");
        subject.AddCommonName(deviceId);
        var request = new CertificateRequest(subject.Build(), key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, true));
        // Client authentication only: a device certificate cannot serve as a broker's certificate.
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.2")], false));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
        request.CertificateExtensions.Add(X509AuthorityKeyIdentifierExtension.CreateFromCertificate(authority, true, false));
        var serial = RandomNumberGenerator.GetBytes(16);
        serial[0] &= 0x7F;
        // A certificate cannot outlive, or predate, the CA that signs it.
        var notAfterCapped = notAfter < authority.NotAfter ? notAfter : new DateTimeOffset(authority.NotAfter.ToUniversalTime());
        var notBeforeCapped = notBefore > authority.NotBefore ? notBefore : new DateTimeOffset(authority.NotBefore.ToUniversalTime());
        using var certificate = request.Create(authority, notBeforeCapped, notAfterCapped, serial);
        var certificatePath = Path.GetFullPath(Path.Combine(outputDirectory, deviceId + ".pem"));
        var keyPath = Path.GetFullPath(Path.Combine(outputDirectory, deviceId + ".key"));
        Directory.CreateDirectory(outputDirectory);
        File.WriteAllText(certificatePath, certificate.ExportCertificatePem() + "\n");
        DataDirectory.WritePrivateFile(keyPath, System.Text.Encoding.ASCII.GetBytes(key.ExportPkcs8PrivateKeyPem() + "\n"));
        return new IssuedCertificate(certificatePath, keyPath, Thumbprint(certificate), notAfterCapped);
    }

    /// <summary>The SHA-256 thumbprint, upper-case hex.</summary>
    public static string Thumbprint(X509Certificate2 certificate) => certificate.GetCertHashString(HashAlgorithmName.SHA256);

    /// <summary>
    /// Checks a client certificate: signed by this CA, within its validity, for client authentication. On success
    /// <paramref name="deviceId"/> is its subject's CN; otherwise <paramref name="problem"/> says why.
    /// </summary>
    public bool TryVerify(X509Certificate2 certificate, out string deviceId, out string problem)
    {
        deviceId = "";
        var authority = CurrentAuthority();
        if (authority is null)
        {
            problem = "no device CA exists (nightlight devices add ID --cert makes one)";
            return false;
        }
        var now = DateTime.Now;
        if (certificate.NotAfter < now)
        {
            problem = $"certificate expired {certificate.NotAfter.ToUniversalTime():yyyy-MM-dd HH:mm:ss} UTC";
            return false;
        }
        if (certificate.NotBefore > now)
        {
            problem = "certificate not yet valid";
            return false;
        }
        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.Add(authority);
        // Revocation is the identities file's allow-list, not CRLs.
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        // Never fetch the URLs a client's certificate names (authorityInfoAccess): an attacker would choose them.
        chain.ChainPolicy.DisableCertificateDownloads = true;
        chain.ChainPolicy.ApplicationPolicy.Add(new Oid("1.3.6.1.5.5.7.3.2"));
        if (!chain.Build(certificate))
        {
            problem = "certificate not signed by the device CA (" + string.Join(", ", chain.ChainStatus.Select(s => s.Status)) + ")";
            return false;
        }
        var commonName = certificate.GetNameInfo(X509NameType.SimpleName, forIssuer: false);
        if (!Nightlight.Protocol.Topics.IsValidDeviceId(commonName))
        {
            problem = "certificate subject is not a device id";
            return false;
        }
        deviceId = commonName;
        problem = "";
        return true;
    }

    // The broker reads the CA when it appears or changes, so `devices add --cert` works while it runs.
    X509Certificate2? CurrentAuthority()
    {
        var path = CertificatePath;
        var written = File.Exists(path) ? File.GetLastWriteTimeUtc(path) : DateTime.MinValue;
        lock (_gate)
        {
            if (_loaded.Written != written)
            {
                _loaded = (written, written == DateTime.MinValue ? null : X509CertificateLoader.LoadCertificateFromFile(path));
            }
            return _loaded.Certificate;
        }
    }

    X509Certificate2 LoadOrCreateAuthority()
    {
        var pfx = Path.Combine(_directory, KeyFile);
        if (File.Exists(pfx) && File.Exists(CertificatePath))
        {
            return X509CertificateLoader.LoadPkcs12FromFile(pfx, null);
        }
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest("CN=Nightlight device CA", key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, true, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
        using var certificate = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddYears(10));
        DataDirectory.WritePrivateFile(pfx, certificate.Export(X509ContentType.Pkcs12));
        File.WriteAllText(CertificatePath, certificate.ExportCertificatePem() + "\n");
        return X509CertificateLoader.LoadPkcs12FromFile(pfx, null);
    }
}
