using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Nightlight.Mqtt;

/// <summary>
/// How a client speaks TLS to brokers: which certificate authorities it trusts, which certificate it shows, and that
/// checking a broker's certificate never downloads anything (no missing issuer from an authorityInfoAccess URL, no
/// CRL, no OCSP). The files are read at each connection, so a renewed certificate is used from the next reconnect.
/// </summary>
public sealed class ClientTlsSettings
{
    static readonly Oid ServerAuthentication = new("1.3.6.1.5.5.7.3.1");

    /// <summary>PEM file with the authorities a broker's certificate must chain to; null trusts the system's store.</summary>
    public string? CaFile { get; init; }

    /// <summary>PEM file with this client's certificate; null shows none.</summary>
    public string? ClientCertificateFile { get; init; }

    /// <summary>PEM file with the key of <see cref="ClientCertificateFile"/>; null when the certificate file holds it.</summary>
    public string? ClientKeyFile { get; init; }

    /// <summary>True to accept any broker certificate (tests and labs only).</summary>
    public bool AllowUntrustedCertificates { get; init; }

    /// <summary>The TLS settings of <paramref name="options"/>.</summary>
    public static ClientTlsSettings From(MqttConnectionOptions options) => new()
    {
        CaFile = options.CaFile,
        ClientCertificateFile = options.ClientCertificateFile,
        ClientKeyFile = options.ClientKeyFile,
        AllowUntrustedCertificates = options.AllowUntrustedCertificates,
    };

    /// <summary>
    /// An HTTP handler whose HTTPS connections check servers and show a certificate as these settings say, downloading
    /// nothing. The caller owns it (an <see cref="HttpClient"/> given it disposes it).
    /// </summary>
    public SocketsHttpHandler CreateHttpHandler()
    {
        var handler = new SocketsHttpHandler();
        handler.SslOptions.EnabledSslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13;
        handler.SslOptions.CertificateChainPolicy = ChainPolicy();
        if (LoadClientCertificate() is { } certificate)
        {
            handler.SslOptions.ClientCertificates = [certificate];
        }
        if (AllowUntrustedCertificates)
        {
            handler.SslOptions.RemoteCertificateValidationCallback = (_, _, _, _) => true;
        }
        return handler;
    }

    /// <summary>Settings for one TLS handshake with the broker at <paramref name="targetHost"/>.</summary>
    internal BrokerCertificateCheck Begin(string targetHost) => new(this, targetHost);

    internal X509ChainPolicy ChainPolicy()
    {
        var policy = new X509ChainPolicy
        {
            DisableCertificateDownloads = true,
            RevocationMode = X509RevocationMode.NoCheck,
        };
        policy.ApplicationPolicy.Add(ServerAuthentication);
        if (CaFile is { } caFile)
        {
            policy.TrustMode = X509ChainTrustMode.CustomRootTrust;
            policy.CustomTrustStore.ImportFromPemFile(caFile);
        }
        return policy;
    }

    internal X509Certificate2? LoadClientCertificate()
    {
        if (ClientCertificateFile is not { } certificateFile)
        {
            return null;
        }
        using var pem = X509Certificate2.CreateFromPemFile(certificateFile, ClientKeyFile);
        // SslStream on Linux wants a key that is not ephemeral; a PKCS#12 round trip gives it one.
        return X509CertificateLoader.LoadPkcs12(pem.Export(X509ContentType.Pkcs12), null);
    }
}

/// <summary>
/// The options of one TLS handshake with a broker, and why the broker's certificate was refused, if it was. Owns the
/// client certificate it loaded.
/// </summary>
sealed class BrokerCertificateCheck : IDisposable
{
    readonly ClientTlsSettings _settings;
    readonly string _targetHost;
    string? _refusal;

    public BrokerCertificateCheck(ClientTlsSettings settings, string targetHost)
    {
        _settings = settings;
        _targetHost = targetHost;
        ClientCertificate = settings.LoadClientCertificate();
        Options = new SslClientAuthenticationOptions
        {
            TargetHost = targetHost,
            EnabledSslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13,
            CertificateChainPolicy = settings.ChainPolicy(),
            ClientCertificates = ClientCertificate is null ? null : [ClientCertificate],
            RemoteCertificateValidationCallback = Validate,
        };
    }

    public SslClientAuthenticationOptions Options { get; }

    public X509Certificate2? ClientCertificate { get; }

    /// <summary>
    /// <paramref name="failure"/> of the handshake, or, when it failed because the broker's certificate was refused, a
    /// <see cref="BrokerCertificateException"/> that says why.
    /// </summary>
    public Exception Explain(Exception failure) => _refusal is { } refusal ? new BrokerCertificateException(refusal, failure) : failure;

    bool Validate(object sender, X509Certificate? certificate, X509Chain? chain, SslPolicyErrors errors)
    {
        if (_settings.AllowUntrustedCertificates || errors == SslPolicyErrors.None)
        {
            return true;
        }
        var reasons = new List<string>();
        if (certificate is null || errors.HasFlag(SslPolicyErrors.RemoteCertificateNotAvailable))
        {
            reasons.Add("it showed no certificate");
        }
        else
        {
            if (errors.HasFlag(SslPolicyErrors.RemoteCertificateChainErrors))
            {
                var trusted = _settings.CaFile is { } caFile ? $"the CA in {caFile}" : "a CA this system trusts";
                var statuses = chain?.ChainStatus.Select(s => s.Status).Distinct().ToList() ?? [];
                var partial = statuses.Contains(X509ChainStatusFlags.PartialChain) ? "; the broker must send its intermediate certificates, none are downloaded" : "";
                reasons.Add($"'{certificate.Subject}', issued by '{certificate.Issuer}', does not chain to {trusted} ({string.Join(", ", statuses)}{partial})");
            }
            if (errors.HasFlag(SslPolicyErrors.RemoteCertificateNameMismatch))
            {
                reasons.Add($"'{certificate.Subject}' is not issued to {_targetHost}");
            }
        }
        _refusal = string.Join("; ", reasons);
        return false;
    }

    public void Dispose() => ClientCertificate?.Dispose();
}

/// <summary>A broker's TLS certificate was refused; the message says why.</summary>
public sealed class BrokerCertificateException(string message, Exception inner) : AuthenticationException(message, inner);
