using System.Security.Cryptography.X509Certificates;
using Nightlight.Security;

namespace Nightlight.Broker;

/// <summary>The MQTT-over-TLS listener's port and certificate, decided once at start.</summary>
public sealed class BrokerTls
{
    BrokerTls(int? port, X509Certificate2? certificate, string? developmentCertificate, bool created, int? httpsPort = null)
    {
        Port = port;
        HttpsPort = httpsPort;
        Certificate = certificate;
        DevelopmentCertificatePem = developmentCertificate;
        DevelopmentCertificateCreated = created;
    }

    /// <summary>The TLS port, or null when TLS is off.</summary>
    public int? Port { get; }

    /// <summary>The HTTPS port (pages and MQTT over secure WebSocket at /mqtt), or null when HTTPS is off.</summary>
    public int? HttpsPort { get; }

    /// <summary>The certificate of both the TLS listener and HTTPS; null when both are off.</summary>
    public X509Certificate2? Certificate { get; }

    /// <summary>Path of the development certificate clients must trust, when one is in use.</summary>
    public string? DevelopmentCertificatePem { get; }

    /// <summary>True when the development certificate was made by this start.</summary>
    public bool DevelopmentCertificateCreated { get; }

    /// <summary>
    /// Kestrel's TLS settings: this certificate, and client certificates asked for but not required. Any client
    /// certificate passes the handshake; <see cref="BrokerAccess"/> checks it against the device CA at CONNECT, so a
    /// refusal gets an MQTT reason code and a log line instead of a bare TLS alert.
    /// </summary>
    public Microsoft.AspNetCore.Server.Kestrel.Https.HttpsConnectionAdapterOptions HttpsOptions() => new()
    {
        ServerCertificate = Certificate,
        ClientCertificateMode = Microsoft.AspNetCore.Server.Kestrel.Https.ClientCertificateMode.AllowCertificate,
        ClientCertificateValidation = (_, _, _) => true,
        // The handshake's own chain build must not fetch what a client's certificate names (AIA, CRL, OCSP URLs).
        CheckCertificateRevocation = false,
        OnAuthenticate = (_, ssl) => ssl.CertificateChainPolicy = new System.Security.Cryptography.X509Certificates.X509ChainPolicy
        {
            DisableCertificateDownloads = true,
            RevocationMode = System.Security.Cryptography.X509Certificates.X509RevocationMode.NoCheck,
        },
    };

    /// <summary>Decides TLS for the MQTT listener and, when <paramref name="httpsPort"/> is set, for HTTPS: one certificate for both.</summary>
    public static BrokerTls Create(BrokerOptions options, string dataDirectory, int? httpsPort = null)
    {
        var port = options.EffectiveTlsPort;
        if (port is null && httpsPort is null)
        {
            return new BrokerTls(null, null, null, false);
        }
        if (!string.IsNullOrEmpty(options.CertificatePath))
        {
            return new BrokerTls(port, BrokerCertificate.Load(options.CertificatePath, options.KeyPath, options.CertificatePassword), null, false, httpsPort);
        }
        var certificate = BrokerCertificate.Development(dataDirectory, out var created);
        return new BrokerTls(port, certificate, Path.Combine(dataDirectory, BrokerCertificate.DevelopmentCertificateFile), created, httpsPort);
    }
}
