using System.Collections.Concurrent;
using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Serialization;
using Nightlight.Protocol;

namespace Nightlight.Security;

/// <summary>What an identity authenticates with: its role, its secret's hash (null: certificates only) and its certificates' thumbprints.</summary>
public sealed record IdentityCredentials(IdentityRole Role, string? SecretHash, IReadOnlySet<string> Certificates)
{
    /// <summary>
    /// True when a connection made with <paramref name="before"/> may no longer stand: the role changed, the secret
    /// was rotated, or a certificate was revoked. A certificate added changes nothing for those connected.
    /// </summary>
    public bool Withdraws(IdentityCredentials before) =>
        Role != before.Role || (before.SecretHash is not null && SecretHash != before.SecretHash) || !before.Certificates.IsSubsetOf(Certificates);
}

/// <summary>One stored identity, as <c>devices list</c> shows it. The secret itself is never stored.</summary>
public sealed record IdentityEntry(string Id, IdentityRole Role, DateTimeOffset Created, DateTimeOffset? Rotated);

/// <summary>
/// Device and server identities in <c>{data}/identities.json</c>: id → role and HMAC-SHA256 of a generated secret
/// with a per-identity salt. The CLI writes the file; a running broker notices changes within a second, so added,
/// rotated and removed identities take effect without a restart. Secrets are random 256-bit values, so a slow hash
/// buys nothing against guessing and would hand an attacker the CPU: a check costs microseconds. Older PBKDF2
/// entries are still read, and rewritten as HMAC the first time their secret is verified.
/// </summary>
public sealed class DeviceIdentities
{
    public const string FileName = "identities.json";

    /// <summary>The hash of every new entry: HMAC-SHA256 keyed with the entry's salt.</summary>
    public const string HmacScheme = "hmac-sha256";

    /// <summary>How long a successful verification of an older PBKDF2 entry is remembered.</summary>
    public static readonly TimeSpan CacheLifetime = TimeSpan.FromMinutes(10);

    const int SaltLength = 16;
    const int HashBytes = 32;
    const int SecretBytes = 32;

    static readonly JsonSerializerOptions Json = new()
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.CamelCase,
        Converters = { new JsonStringEnumConverter(JsonNamingPolicy.CamelCase) },
    };

    readonly string _path;
    readonly Lock _gate = new();
    readonly ConcurrentDictionary<string, (byte[] SecretDigest, long Expires)> _verified = new(StringComparer.Ordinal);
    // Slow hashes of wrong secrets are an attacker's lever on the CPU: at most this many run at once.
    readonly SemaphoreSlim _hashing = new(Math.Max(1, Environment.ProcessorCount));
    Dictionary<string, StoredIdentity> _identities = new(StringComparer.Ordinal);
    (DateTime Written, long Length) _fileStamp;
    long _nextCheck;

    public DeviceIdentities(string path)
    {
        _path = path;
        Reload(force: true);
    }

    /// <summary>The identities file in <paramref name="dataDirectory"/>.</summary>
    public static DeviceIdentities InDirectory(string dataDirectory) => new(System.IO.Path.Combine(dataDirectory, FileName));

    public string FilePath => _path;

    /// <summary>Number of identities; zero means none were ever added (or all were removed).</summary>
    public int Count
    {
        get
        {
            Reload(force: false);
            return Volatile.Read(ref _identities).Count;
        }
    }

    /// <summary>
    /// True once the identities file exists, even when its last identity was removed: removing devices must never
    /// reopen a broker to anonymous clients. Delete the file to go back to anonymous mode.
    /// </summary>
    public bool Exists
    {
        get
        {
            Reload(force: false);
            return _fileStamp.Length >= 0;
        }
    }

    public IReadOnlyList<IdentityEntry> List()
    {
        Reload(force: true);
        return [.. _identities.OrderBy(p => p.Key, StringComparer.Ordinal).Select(p => new IdentityEntry(p.Key, p.Value.Role, p.Value.Created, p.Value.Rotated))];
    }

    /// <summary>The role of <paramref name="id"/>, or false when no such identity exists (any more).</summary>
    public bool TryGetRole(string id, out IdentityRole role)
    {
        Reload(force: false);
        if (Volatile.Read(ref _identities).TryGetValue(id, out var stored))
        {
            role = stored.Role;
            return true;
        }
        role = default;
        return false;
    }

    /// <summary>
    /// What each identity authenticates with now, for a broker that must end the connections of an identity that was
    /// removed, rotated or revoked. Reads the file again when it changed (checked at most once a second).
    /// </summary>
    public IReadOnlyDictionary<string, IdentityCredentials> Credentials()
    {
        Reload(force: false);
        return Volatile.Read(ref _identities).ToDictionary(
            p => p.Key,
            p => new IdentityCredentials(p.Value.Role, p.Value.Hash, p.Value.Certificates?.Keys.ToHashSet(StringComparer.Ordinal) ?? []),
            StringComparer.Ordinal);
    }

    /// <summary>Creates an identity and returns its secret: the only time the secret exists outside its owner.</summary>
    public string Add(string id, IdentityRole role)
    {
        if (!Topics.IsValidDeviceId(id))
        {
            throw new ArgumentException($"'{id}' is not a valid id: 1-{Topics.MaxDeviceIdLength} characters, no '/', '+', '#', spaces, control characters or leading '$'");
        }
        if (role == IdentityRole.Device)
        {
            RefuseServerClientIdForm(id);
        }
        return Update(identities =>
        {
            if (identities.ContainsKey(id))
            {
                throw new InvalidOperationException($"'{id}' already exists; use 'devices rotate {id}' for a new secret");
            }
            var (secret, stored) = NewSecret(role, DateTimeOffset.UtcNow, rotated: null);
            identities[id] = stored;
            return secret;
        });
    }

    /// <summary>
    /// A device id in a server client id form (<see cref="AccessPolicy.IsServerClientId"/>) could never connect: the
    /// broker keeps those ids for server identities.
    /// </summary>
    public static void RefuseServerClientIdForm(string id)
    {
        if (AccessPolicy.IsServerClientId(id))
        {
            throw new ArgumentException($"'{id}' cannot be a device id: ids ending in 'nightlight_server' or starting with 'nightlight_server-' are client ids of the server, which no device may use");
        }
    }

    /// <summary>Replaces the secret of <paramref name="id"/>; the old one stops working at once.</summary>
    public string Rotate(string id) => Update(identities =>
    {
        if (!identities.TryGetValue(id, out var old))
        {
            throw new KeyNotFoundException($"no identity '{id}'");
        }
        var (secret, stored) = NewSecret(old.Role, old.Created, DateTimeOffset.UtcNow);
        identities[id] = stored with { Certificates = old.Certificates };
        return secret;
    });

    public bool Remove(string id) => Update(identities => identities.Remove(id));

    /// <summary>
    /// Allows a device certificate (by SHA-256 thumbprint) for device <paramref name="id"/>, creating the device
    /// without a password when it does not exist. True when the device was created.
    /// </summary>
    public bool AddCertificate(string id, string thumbprint, DateTimeOffset notAfter)
    {
        if (!Topics.IsValidDeviceId(id))
        {
            throw new ArgumentException($"'{id}' is not a valid id: 1-{Topics.MaxDeviceIdLength} characters, no '/', '+', '#', spaces, control characters or leading '$'");
        }
        RefuseServerClientIdForm(id);
        return Update(identities =>
        {
            var created = !identities.TryGetValue(id, out var stored);
            if (stored is { Role: not IdentityRole.Device })
            {
                throw new InvalidOperationException($"'{id}' is a server identity; certificates are for devices");
            }
            stored ??= new StoredIdentity(IdentityRole.Device, null, null, 0, DateTimeOffset.UtcNow, null);
            var certificates = new SortedDictionary<string, DateTimeOffset>(stored.Certificates ?? new SortedDictionary<string, DateTimeOffset>(), StringComparer.Ordinal)
            {
                [thumbprint] = notAfter,
            };
            identities[id] = stored with { Certificates = certificates };
            return created;
        });
    }

    /// <summary>Revokes every certificate of <paramref name="id"/>; returns how many there were.</summary>
    public int RevokeCertificates(string id) => Update(identities =>
    {
        if (!identities.TryGetValue(id, out var stored))
        {
            throw new KeyNotFoundException($"no identity '{id}'");
        }
        identities[id] = stored with { Certificates = null };
        return stored.Certificates?.Count ?? 0;
    });

    /// <summary>True when the certificate with <paramref name="thumbprint"/> is (still) allowed for device <paramref name="id"/>.</summary>
    public bool HasCertificate(string id, string thumbprint)
    {
        Reload(force: false);
        return Volatile.Read(ref _identities).TryGetValue(id, out var stored) && stored.Role == IdentityRole.Device &&
            stored.Certificates is { } certificates && certificates.ContainsKey(thumbprint);
    }

    /// <summary>True when <paramref name="secret"/> is the current secret of <paramref name="id"/>.</summary>
    public async ValueTask<bool> VerifyAsync(string id, byte[]? secret, CancellationToken cancellationToken)
    {
        Reload(force: false);
        if (secret is null || secret.Length == 0 || secret.Length > 1024 || !Volatile.Read(ref _identities).TryGetValue(id, out var stored) ||
            stored.HashBytes.Length == 0)
        {
            return false;
        }
        if (stored.Scheme == HmacScheme)
        {
            return CryptographicOperations.FixedTimeEquals(HMACSHA256.HashData(stored.SaltBytes, secret), stored.HashBytes);
        }
        var digest = SHA256.HashData(secret);
        if (_verified.TryGetValue(id, out var cached) && cached.Expires > Stopwatch.GetTimestamp() &&
            CryptographicOperations.FixedTimeEquals(cached.SecretDigest, digest))
        {
            return true;
        }
        await _hashing.WaitAsync(cancellationToken);
        bool ok;
        try
        {
            var hash = Rfc2898DeriveBytes.Pbkdf2(secret, stored.SaltBytes, stored.Iterations, HashAlgorithmName.SHA256, HashBytes);
            ok = CryptographicOperations.FixedTimeEquals(hash, stored.HashBytes);
        }
        finally
        {
            _hashing.Release();
        }
        if (ok)
        {
            _verified[id] = (digest, Stopwatch.GetTimestamp() + (long)(CacheLifetime.TotalSeconds * Stopwatch.Frequency));
            Upgrade(id, stored, secret);
        }
        return ok;
    }

    // A PBKDF2 entry whose secret was just verified becomes an HMAC entry, unless the file changed meanwhile.
    void Upgrade(string id, StoredIdentity verified, byte[] secret)
    {
        try
        {
            Update(identities =>
            {
                if (identities.TryGetValue(id, out var current) && current.Hash == verified.Hash)
                {
                    identities[id] = current.WithHmac(secret);
                }
                return 0;
            });
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // A read-only data directory keeps the PBKDF2 entry; it still verifies.
        }
    }

    static (string Secret, StoredIdentity Stored) NewSecret(IdentityRole role, DateTimeOffset created, DateTimeOffset? rotated)
    {
        var secret = Base64Url(RandomNumberGenerator.GetBytes(SecretBytes));
        return (secret, new StoredIdentity(role, null, null, 0, created, rotated).WithHmac(System.Text.Encoding.UTF8.GetBytes(secret)));
    }

    static string Base64Url(byte[] bytes) => Convert.ToBase64String(bytes).TrimEnd('=').Replace('+', '-').Replace('/', '_');

    T Update<T>(Func<Dictionary<string, StoredIdentity>, T> change)
    {
        lock (_gate)
        {
            var identities = Read(_path);
            var result = change(identities);
            var file = new IdentitiesFile(1, new SortedDictionary<string, StoredIdentity>(identities, StringComparer.Ordinal));
            DataDirectory.WritePrivateFile(_path, JsonSerializer.SerializeToUtf8Bytes(file, Json));
            Reload(force: true);
            return result;
        }
    }

    void Reload(bool force)
    {
        var now = Stopwatch.GetTimestamp();
        if (!force && now < Volatile.Read(ref _nextCheck))
        {
            return;
        }
        lock (_gate)
        {
            Volatile.Write(ref _nextCheck, now + Stopwatch.Frequency);
            var info = new FileInfo(_path);
            var stamp = info.Exists ? (info.LastWriteTimeUtc, info.Length) : (DateTime.MinValue, -1L);
            if (!force && stamp == _fileStamp)
            {
                return;
            }
            var identities = Read(_path);
            _fileStamp = stamp;
            Volatile.Write(ref _identities, identities);
            // A rotated or removed secret must stop working now, not when its cache entry expires.
            _verified.Clear();
        }
    }

    static Dictionary<string, StoredIdentity> Read(string path)
    {
        if (!File.Exists(path))
        {
            return new Dictionary<string, StoredIdentity>(StringComparer.Ordinal);
        }
        IdentitiesFile? file;
        try
        {
            file = JsonSerializer.Deserialize<IdentitiesFile>(File.ReadAllBytes(path), Json);
        }
        catch (JsonException e)
        {
            throw new InvalidOperationException($"{path} is not a valid identities file: {e.Message}", e);
        }
        return new Dictionary<string, StoredIdentity>(file?.Identities ?? new SortedDictionary<string, StoredIdentity>(), StringComparer.Ordinal);
    }

    sealed record IdentitiesFile(int Version, SortedDictionary<string, StoredIdentity> Identities);

    // Salt and Hash are null for a device that has only certificates (devices add ID --cert). Scheme null: PBKDF2-SHA256
    // with Iterations (files written before HMAC entries).
    sealed record StoredIdentity(IdentityRole Role, string? Salt, string? Hash, int Iterations, DateTimeOffset Created, DateTimeOffset? Rotated)
    {
        [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
        public string? Scheme { get; init; }

        /// <summary>This entry with a fresh salt and the HMAC of <paramref name="secret"/>.</summary>
        public StoredIdentity WithHmac(byte[] secret)
        {
            var salt = RandomNumberGenerator.GetBytes(SaltLength);
            return this with { Salt = Convert.ToBase64String(salt), Hash = Convert.ToBase64String(HMACSHA256.HashData(salt, secret)), Iterations = 0, Scheme = HmacScheme };
        }

        [JsonIgnore]
        public byte[] SaltBytes => Convert.FromBase64String(Salt ?? "");

        [JsonIgnore]
        public byte[] HashBytes => Convert.FromBase64String(Hash ?? "");

        /// <summary>Allowed device certificates: SHA-256 thumbprint → expiry.</summary>
        [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
        public SortedDictionary<string, DateTimeOffset>? Certificates { get; init; }
    }
}
