using System.Text;
using Microsoft.Extensions.Logging.Abstractions;
using Nightlight.Broker.Core;
using Nightlight.Broker.Core.Packets;
using Nightlight.Broker.Core.Persistence;
using Nightlight.Tests.Support;

namespace Nightlight.Tests.Broker;

/// <summary>The broker's session store on real files: what a restart resumes from, and what damage costs.</summary>
public class FileSessionStoreTests : IDisposable
{
    readonly TempDirectory _directory = new("broker-store");

    public void Dispose() => _directory.Dispose();

    FileSessionStore Open(FileSessionStoreOptions? options = null) => new(_directory.Path, options, NullLogger.Instance);

    static ApplicationMessage Message(string topic, string payload, byte qos = 1, bool retain = false) =>
        new() { Topic = topic, Payload = Encoding.UTF8.GetBytes(payload), QoS = qos, Retain = retain, SenderClientId = "publisher" };

    static StoredSession Session(string clientId, params string[] filters) =>
        new(clientId, "dev-" + clientId, 3600, 0, [.. filters.Select((f, i) => new StoredSubscription(f, 1, i % 2 == 1, true, 1, (uint)i + 1))]);

    async Task<BrokerSnapshot> Reopen(FileSessionStoreOptions? options = null)
    {
        await using var store = Open(options);
        return store.Load();
    }

    [Fact]
    public async Task Every_kind_of_change_survives_a_restart()
    {
        var withProperties = new ApplicationMessage
        {
            Topic = "devA/commands",
            Payload = Encoding.UTF8.GetBytes("{\"led_on\": true}"),
            QoS = 2,
            ExpiresAtUnixMs = 1_900_000_000_000,
            SenderClientId = null,
            Properties = new MessageProperties
            {
                PayloadFormatIndicator = 1,
                MessageExpiryInterval = 60,
                ContentType = "application/json",
                ResponseTopic = "devA/replies",
                CorrelationData = [1, 2, 3],
                UserProperties = [new UserProperty("k", "v"), new UserProperty("k", "w")],
            },
        };
        await using (var store = Open())
        {
            Assert.Empty(store.Load().Sessions);
            store.SaveSession(Session("a", "x/#", "$share/g/y/+"));
            store.SaveSession(Session("b", "z"));
            store.SaveSession(Session("gone", "w"));
            store.SaveMessage(7, withProperties);
            store.SaveMessage(8, Message("x/1", "hello"));
            store.SaveMessage(9, Message("x/2", "done"));
            store.Enqueue("a", new StoredDelivery(7, 0, 2, false, false, [1, 2]));
            store.Enqueue("a", new StoredDelivery(8, 0, 1, true, false, []));
            store.Enqueue("a", new StoredDelivery(9, 0, 1, false, false, []));
            store.Enqueue("gone", new StoredDelivery(8, 0, 1, false, false, []));
            store.UpdateDelivery("a", 7, 42, released: true);
            store.Complete("a", 9);
            store.DeleteSession("gone");
            store.SaveRetained(Message("r/1", "kept", retain: true));
            store.SaveRetained(Message("r/2", "deleted", retain: true));
            store.DeleteRetained("r/2");
            store.SaveInboundQoS2("b", 5, pending: true);
            store.SaveInboundQoS2("b", 6, pending: true);
            store.SaveInboundQoS2("b", 5, pending: false);
            await store.CommitAsync(TestContext.Current.CancellationToken);
        }

        var snapshot = await Reopen();
        Assert.Equal(["a", "b"], snapshot.Sessions.Select(s => s.Session.ClientId).Order());
        var (a, deliveries) = snapshot.Sessions.Single(s => s.Session.ClientId == "a");
        Assert.Equal(Session("a", "x/#", "$share/g/y/+").Subscriptions, a.Subscriptions);
        Assert.Equal(("dev-a", 3600u), (a.Identity, a.SessionExpiryInterval));
        Assert.Equal([7L, 8L], deliveries.Select(d => d.MessageId));
        Assert.Equal((42, (byte)2, true), (deliveries[0].PacketId, deliveries[0].QoS, deliveries[0].Released));
        Assert.Equal([1u, 2u], deliveries[0].SubscriptionIdentifiers);
        Assert.True(deliveries[1].Retain);
        Assert.Equal([7L, 8L], snapshot.Messages.Keys.Order()); // 9 was completed, and nothing else referred to it.
        var restored = snapshot.Messages[7];
        Assert.Equal(("devA/commands", "{\"led_on\": true}", (byte)2, 1_900_000_000_000L, (string?)null),
            (restored.Topic, Encoding.UTF8.GetString(restored.Payload.Span), restored.QoS, restored.ExpiresAtUnixMs, restored.SenderClientId));
        Assert.Equal((byte?)1, restored.Properties!.PayloadFormatIndicator);
        Assert.Equal(60u, restored.Properties.MessageExpiryInterval);
        Assert.Equal("application/json", restored.Properties.ContentType);
        Assert.Equal("devA/replies", restored.Properties.ResponseTopic);
        Assert.Equal([1, 2, 3], restored.Properties.CorrelationData);
        Assert.Equal([new UserProperty("k", "v"), new UserProperty("k", "w")], restored.Properties.UserProperties);
        Assert.Equal("publisher", snapshot.Messages[8].SenderClientId);
        Assert.Equal("r/1", Assert.Single(snapshot.Retained).Topic);
        Assert.Equal([(ushort)6], snapshot.InboundQoS2["b"]);
        Assert.Equal(9, snapshot.LastMessageId);
    }

    [Fact]
    public async Task Delayed_wills_survive_a_restart_until_deleted_with_their_session()
    {
        var will = new StoredWill("a", "dev-a", "tcp", Message("a/status", "offline", retain: true), 30, 0);
        await using (var store = Open())
        {
            store.Load();
            store.SaveSession(Session("a"));
            store.SaveSession(Session("b"));
            store.SaveSession(Session("c"));
            store.SaveWill(will);
            store.SaveWill(will with { DueAtUnixMs = 1_900_000_000_000 });
            store.SaveWill(will with { ClientId = "b" });
            store.SaveWill(will with { ClientId = "c" });
            store.DeleteWill("b");
            store.DeleteSession("c");
            await store.CommitAsync(TestContext.Current.CancellationToken);
        }

        // Once from the journal, once more from the snapshot the first load wrote.
        for (var load = 1; load <= 2; load++)
        {
            var snapshot = await Reopen();
            var kept = Assert.Single(snapshot.Wills);
            Assert.Equal("a", kept.Key);
            var (clientId, identity, listener, message, delay, due) = kept.Value;
            Assert.Equal(("a", "dev-a", "tcp", 30u, 1_900_000_000_000L), (clientId, identity, listener, delay, due));
            Assert.Equal(("a/status", "offline", (byte)1, true), (message.Topic, Encoding.UTF8.GetString(message.Payload.Span), message.QoS, message.Retain));
        }
    }

    [Fact]
    public async Task A_committed_change_is_on_disk_without_a_clean_shutdown()
    {
        var store = Open();
        store.Load();
        store.SaveSession(Session("s1", "x/#"));
        store.SaveMessage(1, Message("x/1", "hello"));
        store.Enqueue("s1", new StoredDelivery(1, 0, 1, false, false, []));
        await store.CommitAsync(TestContext.Current.CancellationToken);

        // What kill -9 leaves: the files as they are now, read by a new process while this one is still running.
        using var copy = new TempDirectory("broker-store-copy");
        foreach (var file in Directory.GetFiles(_directory.Path))
        {
            File.Copy(file, Path.Combine(copy.Path, Path.GetFileName(file)));
        }
        await using (var reopened = new FileSessionStore(copy.Path, null, NullLogger.Instance))
        {
            var snapshot = reopened.Load();
            var (session, deliveries) = Assert.Single(snapshot.Sessions);
            Assert.Equal("s1", session.ClientId);
            Assert.Equal("hello", Encoding.UTF8.GetString(snapshot.Messages[Assert.Single(deliveries).MessageId].Payload.Span));
        }
        await store.DisposeAsync();
    }

    [Fact]
    public async Task A_torn_record_at_the_end_loses_only_that_record()
    {
        await using (var store = Open())
        {
            store.Load();
            store.SaveSession(Session("s1", "a"));
            store.SaveSession(Session("s2", "b"));
            store.SaveSession(Session("s3", "c"));
        }
        var journal = Directory.GetFiles(_directory.Path, "journal.*").Single();
        using (var file = new FileStream(journal, FileMode.Open))
        {
            file.SetLength(file.Length - 5); // A crash in the middle of writing the last record.
        }

        await using var reopened = Open();
        var snapshot = reopened.Load();
        Assert.Equal(["s1", "s2"], snapshot.Sessions.Select(s => s.Session.ClientId));
        Assert.Equal(0, reopened.DamagedRecords);
    }

    [Fact]
    public async Task A_flipped_byte_in_the_middle_loses_only_its_record_and_is_counted()
    {
        await using (var store = Open())
        {
            store.Load();
            store.SaveSession(Session("first", "a"));
            store.SaveSession(Session("middle", "b"));
            store.SaveSession(Session("last", "c"));
        }
        var journal = Directory.GetFiles(_directory.Path, "journal.*").Single();
        var bytes = File.ReadAllBytes(journal);
        var at = bytes.AsSpan().IndexOf("middle"u8);
        Assert.True(at > 0);
        bytes[at + 2] ^= 0x20;
        File.WriteAllBytes(journal, bytes);

        await using (var reopened = Open())
        {
            var snapshot = reopened.Load();
            Assert.Equal(["first", "last"], snapshot.Sessions.Select(s => s.Session.ClientId));
            Assert.Equal(1, reopened.DamagedRecords);
        }

        // The damage is gone with the files that held it: the next start finds nothing wrong.
        await using var again = Open();
        Assert.Equal(2, again.Load().Sessions.Count);
        Assert.Equal(0, again.DamagedRecords);
    }

    /// <summary>
    /// A commit under every fsync policy completes only once its change is in the journal file (the page cache at
    /// least), so an acknowledgement that waited for it survives kill -9.
    /// </summary>
    [Theory]
    [InlineData(StoreFsync.Batch)]
    [InlineData(StoreFsync.Interval)]
    [InlineData(StoreFsync.Never)]
    public async Task A_commit_completes_only_after_its_change_is_written(StoreFsync fsync)
    {
        await using var store = Open(new FileSessionStoreOptions { Fsync = fsync, SyncInterval = TimeSpan.FromMinutes(1) });
        store.Load();
        var journal = Directory.GetFiles(_directory.Path, "journal.*").Single();
        for (var i = 0; i < 20; i++)
        {
            store.SaveSession(Session($"written-{i:D2}"));
            await store.CommitAsync(TestContext.Current.CancellationToken);
            using var file = new FileStream(journal, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            var bytes = new byte[file.Length];
            file.ReadExactly(bytes);
            Assert.True(bytes.AsSpan().IndexOf(Encoding.UTF8.GetBytes($"written-{i:D2}")) >= 0, $"{fsync}: change {i} committed but not in {journal}");
        }
    }

    /// <summary>
    /// Files as the previous format (1) wrote them, will records included: a snapshot with a session, its queued message,
    /// a will that was due and a retained message, and a journal after it with a second session, its will and a QoS 2 id.
    /// </summary>
    [Fact]
    public async Task A_store_written_in_the_previous_format_is_read_whole()
    {
        foreach (var file in Directory.GetFiles(Path.Combine(AppContext.BaseDirectory, "Broker", "StoreFormat1")))
        {
            File.Copy(file, Path.Combine(_directory.Path, Path.GetFileName(file)));
        }
        for (var load = 1; load <= 2; load++)
        {
            // The second load reads the snapshot the first one wrote in the current format.
            await using var store = Open();
            var snapshot = store.Load();
            Assert.Equal(0, store.DamagedRecords);
            Assert.Equal(["lamp1", "lamp2"], snapshot.Sessions.Select(s => s.Session.ClientId).Order());
            var (lamp1, deliveries) = snapshot.Sessions.Single(s => s.Session.ClientId == "lamp1");
            Assert.Equal(("lamp1/commands", 1), (Assert.Single(lamp1.Subscriptions).Filter, Assert.Single(deliveries).MessageId));
            Assert.Equal("{\"led_on\": true}", Encoding.UTF8.GetString(snapshot.Messages[1].Payload.Span));
            Assert.Equal(("lamp1/status", "offline", 30u, 1_800_000_030_000L),
                (snapshot.Wills["lamp1"].Message.Topic, Encoding.UTF8.GetString(snapshot.Wills["lamp1"].Message.Payload.Span), snapshot.Wills["lamp1"].DelayInterval, snapshot.Wills["lamp1"].DueAtUnixMs));
            Assert.Equal(("lamp2/status", 10u, 0L), (snapshot.Wills["lamp2"].Message.Topic, snapshot.Wills["lamp2"].DelayInterval, snapshot.Wills["lamp2"].DueAtUnixMs));
            Assert.Equal(("lamp1/status", "online"), (Assert.Single(snapshot.Retained).Topic, Encoding.UTF8.GetString(snapshot.Retained[0].Payload.Span)));
            Assert.Equal([(ushort)7], snapshot.InboundQoS2["lamp2"]);
        }
    }

    /// <summary>
    /// A snapshot in a format newer than this store's is not damage: loading stops with the file and what to do, and
    /// leaves the files as they were for the version that wrote them.
    /// </summary>
    [Fact]
    public async Task A_store_in_a_newer_format_is_refused_and_left_as_it_was()
    {
        await using (var store = Open())
        {
            store.Load();
            store.SaveSession(Session("a", "x"));
        }
        await using (var compacting = Open())
        {
            compacting.Load();
        }
        var path = Path.Combine(_directory.Path, "snapshot");
        var bytes = File.ReadAllBytes(path);
        // The header record's format sits after the 12-byte record header and the kind byte; its checksum is made to match.
        System.Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(bytes.AsSpan(13), 99);
        var length = System.Buffers.Binary.BinaryPrimitives.ReadInt32LittleEndian(bytes);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(8), System.IO.Hashing.Crc32.HashToUInt32(bytes.AsSpan(12, length)));
        File.WriteAllBytes(path, bytes);
        var journals = Directory.GetFiles(_directory.Path, "journal.*");

        await using var newer = Open();
        var refused = Assert.Throws<InvalidDataException>(() => newer.Load());
        Assert.Contains($"{path} is in format 99", refused.Message, StringComparison.Ordinal);
        Assert.Equal(0, newer.DamagedRecords);
        Assert.Equal(bytes, File.ReadAllBytes(path));
        Assert.Equal(journals, Directory.GetFiles(_directory.Path, "journal.*"));
    }

    [Fact]
    public async Task A_damaged_snapshot_record_is_skipped_too()
    {
        await using (var store = Open())
        {
            store.Load();
            store.SaveSession(Session("first", "a"));
            store.SaveSession(Session("middle", "b"));
            store.SaveSession(Session("last", "c"));
        }
        await using (var compacting = Open())
        {
            compacting.Load(); // Every load writes the state as a snapshot and starts an empty journal.
        }
        Assert.Equal(0, new FileInfo(Directory.GetFiles(_directory.Path, "journal.*").Single()).Length);
        var snapshotPath = Path.Combine(_directory.Path, "snapshot");
        var bytes = File.ReadAllBytes(snapshotPath);
        bytes[bytes.AsSpan().IndexOf("middle"u8) + 1] ^= 0x01;
        File.WriteAllBytes(snapshotPath, bytes);

        await using var reopened = Open();
        Assert.Equal(["first", "last"], reopened.Load().Sessions.Select(s => s.Session.ClientId));
        Assert.Equal(1, reopened.DamagedRecords);
    }

    [Fact]
    public async Task Compaction_keeps_the_state_and_the_files_small()
    {
        var options = new FileSessionStoreOptions { MinCompactBytes = 16 * 1024, CompactBytes = 64 * 1024 };
        var payload = new string('x', 1000);
        await using (var store = Open(options))
        {
            store.Load();
            store.SaveSession(Session("s1", "x/#"));
            store.SaveRetained(Message("r/1", "kept", retain: true));
            // 2,000 messages of 1 KB go through the session; the last 10 stay queued.
            for (var i = 1; i <= 2000; i++)
            {
                store.SaveMessage(i, Message($"x/{i}", payload));
                store.Enqueue("s1", new StoredDelivery(i, (ushort)(i % 65535 + 1), 1, false, false, []));
                if (i <= 1990)
                {
                    store.Complete("s1", i);
                }
                if (i % 50 == 0)
                {
                    await store.CommitAsync(TestContext.Current.CancellationToken);
                }
            }
            await store.CommitAsync(TestContext.Current.CancellationToken);
            Assert.True(store.Compactions > 5, $"expected several compactions, got {store.Compactions}");
        }
        var onDisk = Directory.GetFiles(_directory.Path).Sum(f => new FileInfo(f).Length);
        Assert.True(onDisk < 200 * 1024, $"2 MB went through the store; {onDisk} bytes are left on disk");

        var snapshot = await Reopen(options);
        var (session, deliveries) = Assert.Single(snapshot.Sessions);
        Assert.Equal("x/#", Assert.Single(session.Subscriptions).Filter);
        Assert.Equal(Enumerable.Range(1991, 10).Select(i => (long)i), deliveries.Select(d => d.MessageId));
        Assert.Equal(Enumerable.Range(1991, 10).Select(i => (long)i), snapshot.Messages.Keys.Order());
        Assert.Equal("r/1", Assert.Single(snapshot.Retained).Topic);
        Assert.Equal(2000, snapshot.LastMessageId);
    }

    [Fact]
    public async Task Completed_and_deleted_sessions_free_their_messages()
    {
        await using (var store = Open())
        {
            store.Load();
            store.SaveSession(Session("s1", "x/#"));
            store.SaveSession(Session("s2", "x/#"));
            for (var i = 1; i <= 100; i++)
            {
                store.SaveMessage(i, Message($"x/{i}", "payload"));
                store.Enqueue("s1", new StoredDelivery(i, 0, 1, false, false, []));
                store.Enqueue("s2", new StoredDelivery(i, 0, 1, false, false, []));
            }
            for (var i = 1; i <= 100; i++)
            {
                store.Complete("s1", i);
            }
            // Still queued for s2: every message is kept.
            await store.CommitAsync(TestContext.Current.CancellationToken);
        }
        var halfway = await Reopen();
        Assert.Equal(100, halfway.Messages.Count);
        Assert.Empty(halfway.Sessions.Single(s => s.Session.ClientId == "s1").Deliveries);

        await using (var store = Open())
        {
            store.Load();
            store.DeleteSession("s2");
        }
        var snapshot = await Reopen();
        Assert.Empty(snapshot.Messages);
        Assert.Equal("s1", Assert.Single(snapshot.Sessions).Session.ClientId);
        var snapshotBytes = new FileInfo(Path.Combine(_directory.Path, "snapshot")).Length;
        Assert.True(snapshotBytes < 1024, $"the snapshot holds one session and no messages, yet is {snapshotBytes} bytes");
    }

    [Fact]
    public async Task The_directory_is_private()
    {
        if (OperatingSystem.IsWindows())
        {
            Assert.Skip("Unix permissions");
            return;
        }
        var path = Path.Combine(_directory.Path, "broker");
        await using var store = new FileSessionStore(path, null, NullLogger.Instance);
        store.Load();
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute, File.GetUnixFileMode(path));
        foreach (var file in Directory.GetFiles(path))
        {
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(file));
        }
    }
}
