using System.CommandLine;
using Nightlight.Security;

namespace Nightlight.Cli;

/// <summary>
/// <c>nightlight devices</c>: the identities the broker authenticates. A secret is printed once, when it is made
/// (<c>add</c>, <c>add-server</c>, <c>rotate</c>), and stored only as a salted slow hash in <c>{data}/identities.json</c>.
/// A running broker picks up every change within a second.
/// </summary>
static class DevicesCommands
{
    public static Command Create()
    {
        var data = new Option<string?>("--data") { Description = "Data directory (default ./nightlight-data; config Data:Directory)", Recursive = true };
        var devices = new Command("devices", "Manage device and server identities: who may connect to the broker, and as whom.") { data };

        var addId = new Argument<string>("ID") { Description = "Device id: its topics are ID/telemetry and ID/commands" };
        var cert = new Option<bool>("--cert") { Description = "Issue a client certificate and key from the local device CA instead of a secret (also for an existing device)" };
        var output = new Option<string?>("--out") { Description = "Directory for the certificate and key files (default: DATA/certificates)" };
        var days = new Option<int?>("--days") { Description = "Days the certificate is valid (default 365)" };
        var count = new Option<int?>("--count") { Description = "Add N devices ID00001 ... (the ids nightlight fleet --id-prefix ID uses)" };
        var save = new Option<string?>("--save") { Description = "Append 'ID SECRET' lines to this file (mode 0600) instead of printing the secrets; nightlight fleet --credentials reads it" };
        var add = new Command("add", "Add a device; prints its secret once (or, with --cert, issues a certificate).") { addId, cert, output, days, count, save };
        add.SetAction(parse => Run(parse, data, store =>
        {
            var id = parse.GetValue(addId)!;
            if (parse.GetValue(cert))
            {
                return IssueCertificate(store, id, parse.GetValue(output), parse.GetValue(days) ?? 365);
            }
            if (parse.GetValue(count) is null && parse.GetValue(save) is null)
            {
                return Created(store.Add(id, IdentityRole.Device), id, IdentityRole.Device, "added");
            }
            return AddMany(store, parse.GetValue(count) is { } n ? [.. Enumerable.Range(1, n).Select(i => $"{id}{i:D5}")] : [id], parse.GetValue(save));
        }));

        var revokeId = new Argument<string>("ID");
        var revoke = new Command("revoke-cert", "Revoke every certificate of a device; connections using one lose their rights at once.") { revokeId };
        revoke.SetAction(parse => Run(parse, data, store =>
        {
            var id = parse.GetValue(revokeId)!;
            var count = store.RevokeCertificates(id);
            Console.WriteLine(count == 0 ? $"{id} had no certificates." : $"Revoked {count} certificate{(count == 1 ? "" : "s")} of {id}.");
            return 0;
        }));

        var serverName = new Argument<string>("NAME") { Description = "Server name (its user name)" };
        var addServer = new Command("add-server", "Add a server identity: reads every device's topics, sends commands to any device; prints its secret once.") { serverName };
        addServer.SetAction(parse => Run(parse, data, store => Created(store.Add(parse.GetValue(serverName)!, IdentityRole.Server), parse.GetValue(serverName)!, IdentityRole.Server, "added")));

        var rotateId = new Argument<string>("ID");
        var rotate = new Command("rotate", "Give a device or server a new secret; the old one stops working at once.") { rotateId };
        rotate.SetAction(parse => Run(parse, data, store =>
        {
            var id = parse.GetValue(rotateId)!;
            var secret = store.Rotate(id);
            store.TryGetRole(id, out var role);
            return Created(secret, id, role, "has a new secret");
        }));

        var removeId = new Argument<string>("ID");
        var remove = new Command("remove", "Remove a device or server; it can no longer connect, publish or subscribe.") { removeId };
        remove.SetAction(parse => Run(parse, data, store =>
        {
            var id = parse.GetValue(removeId)!;
            if (!store.Remove(id))
            {
                Console.Error.WriteLine($"error: no identity '{id}'");
                return 1;
            }
            Console.WriteLine($"Removed {id}.");
            return 0;
        }));

        var list = new Command("list", "List identities (never their secrets).");
        list.SetAction(parse => Run(parse, data, store =>
        {
            var entries = store.List();
            if (entries.Count == 0)
            {
                Console.WriteLine(File.Exists(store.FilePath)
                    ? $"No identities in {store.FilePath}. While that file exists the broker requires authentication; delete it to allow anonymous clients on loopback again."
                    : $"No identities yet ({store.FilePath}): the broker accepts anonymous clients, on loopback only.");
                return 0;
            }
            Console.WriteLine($"{"ID",-30} {"ROLE",-7} {"CREATED",-20} ROTATED");
            foreach (var e in entries)
            {
                Console.WriteLine($"{e.Id,-30} {e.Role.ToString().ToLowerInvariant(),-7} {e.Created:yyyy-MM-dd HH:mm:ss} {(e.Rotated is { } r ? r.ToString("yyyy-MM-dd HH:mm:ss") : "-")}");
            }
            return 0;
        }));

        devices.Subcommands.Add(add);
        devices.Subcommands.Add(addServer);
        devices.Subcommands.Add(list);
        devices.Subcommands.Add(rotate);
        devices.Subcommands.Add(remove);
        devices.Subcommands.Add(revoke);
        return devices;
    }

    static int Created(string secret, string id, IdentityRole role, string what)
    {
        var clientId = role == IdentityRole.Device ? $"{id}nightlight_client" : $"{id}nightlight_server";
        Console.WriteLine($"{(role == IdentityRole.Device ? "Device" : "Server")} {id} {what}. Its secret, shown only this once:");
        Console.WriteLine();
        Console.WriteLine($"    {secret}");
        Console.WriteLine();
        Console.WriteLine($"Connect with user name '{id}', this secret as password, and client id {id}, {clientId} or {id}-ANYTHING, e.g.");
        Console.WriteLine(role == IdentityRole.Device
            ? $"    nightlight device --id {id} --username {id} --password-file FILE --broker mqtt://HOST:1883"
            : $"    nightlight server --username {id} --password-file FILE --broker mqtt://HOST:1883");
        Console.WriteLine("FILE holds the secret (mode 0600); or set it in NIGHTLIGHT_Device__Password / NIGHTLIGHT_Server__Password. " +
            "Never pass it as --password: every local user can read a command line.");
        return 0;
    }

    static int AddMany(DeviceIdentities store, string[] ids, string? save)
    {
        if (ids.Length is < 1 or > 100_000)
        {
            throw new ArgumentException("--count must be between 1 and 100000");
        }
        var lines = new List<string>();
        foreach (var id in ids)
        {
            var secret = store.Add(id, IdentityRole.Device);
            lines.Add($"{id} {secret}");
            if (save is null)
            {
                Console.WriteLine(lines[^1]);
            }
        }
        if (save is not null)
        {
            var existing = File.Exists(save) ? File.ReadAllText(save) : "";
            DataDirectory.WritePrivateFile(Path.GetFullPath(save), System.Text.Encoding.UTF8.GetBytes(existing + string.Join('\n', lines) + "\n"));
            Console.WriteLine($"Added {ids.Length} device{(ids.Length == 1 ? "" : "s")}; their secrets are in {Path.GetFullPath(save)} (owner-only), e.g.");
            Console.WriteLine($"    nightlight fleet --credentials {save} --devices {ids.Length} --broker mqtt://HOST:1883");
        }
        return 0;
    }

    static int IssueCertificate(DeviceIdentities store, string id, string? output, int days)
    {
        if (days < 1)
        {
            throw new ArgumentException("--days must be at least 1");
        }
        DeviceIdentities.RefuseServerClientIdForm(id);
        var dataDirectory = Path.GetDirectoryName(store.FilePath)!;
        var authority = new DeviceCertificateAuthority(dataDirectory);
        var issued = authority.Issue(id, output ?? Path.Combine(dataDirectory, "certificates"), DateTimeOffset.UtcNow.AddMinutes(-5), DateTimeOffset.UtcNow.AddDays(days));
        var created = store.AddCertificate(id, issued.Thumbprint, issued.NotAfter);
        Console.WriteLine($"{(created ? "Device " + id + " added with" : "Device " + id + " has")} a new certificate, valid until {issued.NotAfter:yyyy-MM-dd}:");
        Console.WriteLine($"    certificate  {issued.CertificatePath}");
        Console.WriteLine($"    key          {issued.KeyPath}   (keep it secret)");
        Console.WriteLine($"    device CA    {authority.CertificatePath}");
        Console.WriteLine("Connect over TLS with client id " + $"{id}, {id}nightlight_client or {id}-ANYTHING, e.g.");
        Console.WriteLine($"    nightlight device --id {id} --broker mqtts://HOST:8883 --cert {issued.CertificatePath} --key {issued.KeyPath} --cafile BROKER-CA.pem");
        return 0;
    }

    static int Run(ParseResult parse, Option<string?> data, Func<DeviceIdentities, int> action)
    {
        var config = new ConfigurationBuilder()
            .AddJsonFile(Path.Combine(Directory.GetCurrentDirectory(), "nightlight.json"), optional: true)
            .AddEnvironmentVariables("NIGHTLIGHT_")
            .AddInMemoryCollection(new Dictionary<string, string?> { [DataDirectory.Key] = parse.GetValue(data) }.Where(p => p.Value is not null))
            .Build();
        try
        {
            return action(DeviceIdentities.InDirectory(DataDirectory.Resolve(config)));
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or KeyNotFoundException or IOException or UnauthorizedAccessException)
        {
            Console.Error.WriteLine($"error: {(e is KeyNotFoundException ? e.Message.Trim('\'') : e.Message)}");
            return e is IOException or UnauthorizedAccessException ? 1 : 2;
        }
    }
}
