using System.Buffers;
using System.Net;
using System.Security.Cryptography.X509Certificates;
using MQTTnet;
using MQTTnet.Adapter;
using MQTTnet.Diagnostics.Logger;
using MQTTnet.Formatter;
using MQTTnet.Packets;
using MQTTnet.Protocol;

namespace Nightlight.Mqtt;

/// <summary>
/// Makes the MQTTnet clients of <see cref="ManagedMqttConnection"/>: block-writing connections
/// (<see cref="BufferedClientAdapterFactory"/>) wrapped in a <see cref="PublishPipelineAdapter"/>, and remembers the
/// adapter of the newest connection so the connection can publish QoS 1 sequences through it.
/// </summary>
sealed class PipelinedClientAdapterFactory(ClientTlsSettings tls) : IMqttClientAdapterFactory
{
    readonly BufferedClientAdapterFactory _buffered = new(tls: tls);
    volatile PublishPipelineAdapter? _current;

    /// <summary>The adapter of the newest connection attempt; it says itself whether it is open.</summary>
    public PublishPipelineAdapter? Current => _current;

    public IMqttClient CreateClient() => new MqttClientFactory().CreateMqttClient(this);

    /// <summary>When set, every connection hands the publishes it reads to this on its receive loop (see <see cref="PublishPipelineAdapter"/>).</summary>
    public Func<MqttPublishPacket, ValueTask<bool>>? Deliver { get; set; }

    public IMqttChannelAdapter CreateClientAdapter(MqttClientOptions options, MqttPacketInspector packetInspector, IMqttNetLogger logger)
    {
        var adapter = new PublishPipelineAdapter(_buffered.CreateClientAdapter(options, packetInspector, logger, out var channel), channel, Deliver);
        _current = adapter;
        return adapter;
    }
}

/// <summary>
/// A connection that MQTTnet's client and a lean QoS 1 publisher share. MQTTnet's client spends one task, one
/// dispatcher entry and one thread-pool hop on every PUBACK it awaits; replaying a backlog of 100,000 readings, that
/// bookkeeping (and the threads it wakes) used more CPU than the broker, and paced the replay at about 13,000 readings
/// a second. <see cref="PublishSequenceAsync"/> writes a run of QoS 1 publishes and counts their PUBACKs as they are
/// read, without handing them to MQTTnet; <see cref="SendAtLeastOnceAsync"/> does the same for single QoS 1 publishes
/// (a server's commands, a device's acknowledgements).
/// <para>
/// Packet identifiers are one space per direction and connection, and MQTTnet hands out its own without knowing of
/// ours. So every identifier this side of the connection sends is given here: MQTTnet's publishes, subscribes and
/// unsubscribes are renumbered on the way out and their acknowledgements numbered back on the way in, and the lean
/// publisher takes identifiers from the same pool. Identifiers the broker chooses (its publishes to us and our
/// acknowledgements of them) pass unchanged. What reaches the wire is ordinary MQTT.
/// </para>
/// </summary>
sealed class PublishPipelineAdapter : IMqttChannelAdapter
{
    readonly IMqttChannelAdapter _inner;
    readonly BufferedMqttChannel? _channel;
    readonly Lock _gate = new();
    // Wire identifier → who sent it: MQTTnet (with the identifier it chose) or a sequence (with the publish's index).
    readonly Dictionary<ushort, Owner> _owners = [];
    // MQTTnet's identifier → wire identifier, for the PUBREL of MQTTnet's own QoS 2 publishes.
    readonly Dictionary<ushort, ushort> _wireOfMqttnet = [];
    readonly List<PublishSequence> _sequences = [];
    // Completed when one of MQTTnet's QoS 1 or 2 publishes, held back by the broker's Receive Maximum, may go.
    TaskCompletionSource? _room;
    ushort _next;
    int _outstandingPublishes;
    volatile bool _open;
    volatile bool _closed;

    readonly Func<MqttPublishPacket, ValueTask<bool>>? _deliver;
    // The receive loop's hold on the channel, taken while it delivers what one socket read brought (see ReceivePacketAsync).
    bool _holding;

    /// <summary>
    /// <paramref name="deliver"/>, when given, takes every publish on the receive loop itself, in the order read, and
    /// says whether it was handled. A QoS 0 publish goes no further; a QoS 1 or 2 publish that was handled goes on to
    /// MQTTnet's client, only for its acknowledgement; one that was not is not acknowledged (as MQTTnet does when its
    /// handler throws). MQTTnet's client would queue each publish for another task, with a message and event of its
    /// own: a thread woken per burst and about a kilobyte per message at a server's rate. Answers written while the
    /// publishes of one socket read are delivered are held back and leave together once that read is used up.
    /// </summary>
    public PublishPipelineAdapter(IMqttChannelAdapter inner, BufferedMqttChannel? channel = null, Func<MqttPublishPacket, ValueTask<bool>>? deliver = null)
    {
        _inner = inner;
        _channel = channel;
        _deliver = deliver;
    }

    /// <summary>Holds this connection's packets back until <see cref="Release"/> (see <see cref="BufferedMqttChannel.Hold"/>).</summary>
    public void Hold() => _channel?.Hold();

    /// <summary>Ends a <see cref="Hold"/>.</summary>
    public void Release() => _channel?.Release();

    /// <summary>True from a successful CONNACK until the connection fails or closes.</summary>
    public bool IsOpen => _open && !_closed;

    /// <summary>QoS 1 and 2 publishes the broker takes in flight (MQTT 5 Receive Maximum; 65,535 when it sets none).</summary>
    public int ReceiveMaximum { get; private set; } = ushort.MaxValue;

    public long BytesReceived => _inner.BytesReceived;
    public long BytesSent => _inner.BytesSent;
    public X509Certificate2 ClientCertificate => _inner.ClientCertificate;
    public EndPoint RemoteEndPoint => _inner.RemoteEndPoint;
    public EndPoint LocalEndPoint => _inner.LocalEndPoint;
    public bool IsSecureConnection => _inner.IsSecureConnection;
    public MqttPacketFormatterAdapter PacketFormatterAdapter => _inner.PacketFormatterAdapter;

    public Task ConnectAsync(CancellationToken cancellationToken) => _inner.ConnectAsync(cancellationToken);

    public async Task DisconnectAsync(CancellationToken cancellationToken)
    {
        Close();
        await _inner.DisconnectAsync(cancellationToken).ConfigureAwait(false);
    }

    public void ResetStatistics() => _inner.ResetStatistics();

    public void Dispose()
    {
        Close();
        _inner.Dispose();
    }

    public async Task<MqttPacket> ReceivePacketAsync(CancellationToken cancellationToken)
    {
        while (true)
        {
            if (_holding && !_channel!.HasWholePacket)
            {
                // This read's publishes are delivered: their answers leave now, before the loop waits for the socket.
                EndHold();
            }
            MqttPacket packet;
            try
            {
                packet = await _inner.ReceivePacketAsync(cancellationToken).ConfigureAwait(false);
            }
            catch
            {
                EndHold();
                Close();
                throw;
            }
            if (packet is null)
            {
                EndHold();
                Close();
                return packet!;
            }
            if (TakeAcknowledgement(packet))
            {
                continue;
            }
            if (_deliver is null || packet is not MqttPublishPacket publish)
            {
                return packet;
            }
            if (!_holding && _channel is not null)
            {
                _channel.Hold();
                _holding = true;
            }
            var delivering = _deliver(publish);
            if (!delivering.IsCompleted)
            {
                // The handler waits (a full queue): nothing it held should wait with it.
                EndHold();
            }
            var delivered = await delivering.ConfigureAwait(false);
            if (delivered && publish.QualityOfServiceLevel != MqttQualityOfServiceLevel.AtMostOnce)
            {
                return packet;
            }
        }
    }

    void EndHold()
    {
        if (_holding)
        {
            _holding = false;
            _channel!.Release();
        }
    }

    public async Task SendPacketAsync(MqttPacket packet, CancellationToken cancellationToken)
    {
        if (packet is MqttPacketWithIdentifier { PacketIdentifier: > 0 } numbered)
        {
            // MQTTnet's client does not keep to the broker's Receive Maximum (a broker may disconnect a client that
            // exceeds it); here its QoS 1 and 2 publishes wait for room, ahead of any sequence.
            while (TryRenumber(numbered) is { } room)
            {
                // The acknowledgements that make room answer publishes that may still be held back.
                _channel?.WriteHeld();
                await room.WaitAsync(cancellationToken).ConfigureAwait(false);
            }
        }
        await _inner.SendPacketAsync(packet, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Publishes one message at QoS 1. Completes once the publish is written, with a task that completes with true when
    /// the broker acknowledged it with success, false when it refused it or the connection closed first. So publishes
    /// made one after another leave in that order, and a caller need not wait for one's acknowledgement before sending
    /// the next. The acknowledgement is matched while it is read, and its waiters resume on the thread pool, never on
    /// the reading thread.
    /// </summary>
    public async Task<Task<bool>> SendAtLeastOnceAsync(string topic, ReadOnlyMemory<byte> payload, bool retain, CancellationToken cancellationToken)
    {
        var acknowledged = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        ushort id;
        lock (_gate)
        {
            if (_closed || !_open)
            {
                return Task.FromResult(false);
            }
            // Not held back for the broker's Receive Maximum (nor were MQTTnet's): publishes made one after another
            // must leave in that order, a server's commands to one device above all, and waiters woken together would
            // not. They count toward it, so a sequence makes room for them.
            id = NextFreeIdentifier();
            _owners[id] = new Owner(null, 0, acknowledged);
            _outstandingPublishes++;
        }
        await _inner.SendPacketAsync(AtLeastOnce(topic, payload, id, retain), cancellationToken).ConfigureAwait(false);
        return acknowledged.Task;
    }

    /// <summary>
    /// Publishes one message at QoS 0: completes once it is written, with false when the connection was not open.
    /// MQTTnet's client would build a message, a packet and a result for it, which at a server's rate of answers costs
    /// more than the write.
    /// </summary>
    public async Task<bool> SendAtMostOnceAsync(string topic, ReadOnlyMemory<byte> payload, bool retain, CancellationToken cancellationToken)
    {
        if (!IsOpen)
        {
            return false;
        }
        await _inner.SendPacketAsync(new MqttPublishPacket
        {
            Topic = topic,
            Payload = new ReadOnlySequence<byte>(payload),
            Retain = retain,
        }, cancellationToken).ConfigureAwait(false);
        return true;
    }

    /// <summary>
    /// Publishes <paramref name="payloads"/> to <paramref name="topic"/> at QoS 1 in order, with up to
    /// <paramref name="window"/> unacknowledged at once (and never more than the broker's Receive Maximum, counting
    /// MQTTnet's own publishes). Returns how many from the front the broker acknowledged with success; the rest were
    /// refused or may not have arrived (the connection broke) and are the caller's to send again.
    /// </summary>
    public async Task<int> PublishSequenceAsync(string topic, IReadOnlyList<byte[]> payloads, int window, CancellationToken cancellationToken)
    {
        if (payloads.Count == 0)
        {
            return 0;
        }
        var sequence = new PublishSequence(payloads.Count, Math.Max(1, window));
        lock (_gate)
        {
            if (!IsOpen)
            {
                return 0;
            }
            _sequences.Add(sequence);
        }
        using var cancellation = cancellationToken.Register(() => WakeOutsideLock(sequence, closing: true));
        try
        {
            for (var i = 0; i < payloads.Count;)
            {
                ushort id = 0;
                Task? space = null;
                lock (_gate)
                {
                    if (_closed || sequence.Failed)
                    {
                        break;
                    }
                    if (sequence.InFlight >= sequence.Window || _outstandingPublishes >= ReceiveMaximum || _room is not null)
                    {
                        space = sequence.WaitForSpace();
                    }
                    else
                    {
                        id = NextFreeIdentifier();
                        _owners[id] = new Owner(sequence, i);
                        sequence.InFlight++;
                        _outstandingPublishes++;
                    }
                }
                if (space is not null)
                {
                    _channel?.WriteHeld();
                    // Completed by the receive loop as a PUBACK frees room, and continued right there: the next publish
                    // goes out as soon as there is room for it, with no thread woken for it.
                    await space.ConfigureAwait(false);
                    cancellationToken.ThrowIfCancellationRequested();
                    continue;
                }
                var publish = AtLeastOnce(topic, payloads[i++], id, retain: false);
                await _inner.SendPacketAsync(publish, cancellationToken).ConfigureAwait(false);
            }
            Task? done;
            lock (_gate)
            {
                done = sequence.InFlight == 0 || _closed ? null : sequence.WaitForAll();
            }
            if (done is not null)
            {
                _channel?.WriteHeld();
                await done.ConfigureAwait(false);
                cancellationToken.ThrowIfCancellationRequested();
            }
        }
        catch (Exception) when (!cancellationToken.IsCancellationRequested)
        {
            // A failed write means the connection is going: what was acknowledged so far still counts.
            Close();
        }
        finally
        {
            lock (_gate)
            {
                _sequences.Remove(sequence);
            }
        }
        return sequence.AcceptedFromFront();
    }

    static MqttPublishPacket AtLeastOnce(string topic, ReadOnlyMemory<byte> payload, ushort id, bool retain) => new()
    {
        Topic = topic,
        Payload = new ReadOnlySequence<byte>(payload),
        QualityOfServiceLevel = MqttQualityOfServiceLevel.AtLeastOnce,
        Retain = retain,
        PacketIdentifier = id,
    };

    // Called with every outgoing packet that carries an identifier: gives it its wire identifier, or returns the task
    // to wait for when it is a publish the broker has no room for yet.
    Task? TryRenumber(MqttPacketWithIdentifier packet)
    {
        lock (_gate)
        {
            switch (packet)
            {
                case MqttPublishPacket { QualityOfServiceLevel: not MqttQualityOfServiceLevel.AtMostOnce }:
                case MqttSubscribePacket:
                case MqttUnsubscribePacket:
                    var publish = packet is MqttPublishPacket;
                    if (publish && _outstandingPublishes >= ReceiveMaximum && !_closed)
                    {
                        _room ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                        return _room.Task;
                    }
                    var wire = NextFreeIdentifier();
                    _owners[wire] = new Owner(null, packet.PacketIdentifier);
                    if (publish)
                    {
                        _wireOfMqttnet[packet.PacketIdentifier] = wire;
                        _outstandingPublishes++;
                    }
                    packet.PacketIdentifier = wire;
                    break;
                case MqttPubRelPacket when _wireOfMqttnet.TryGetValue(packet.PacketIdentifier, out var released):
                    // The second step of MQTTnet's own QoS 2 publish: it names the publish by the identifier it chose.
                    packet.PacketIdentifier = released;
                    break;
            }
            return null;
        }
    }

    // Returns true when the packet acknowledged a sequence's publish (it is not MQTTnet's to see); renumbers
    // acknowledgements of MQTTnet's packets back to the identifiers MQTTnet chose.
    bool TakeAcknowledgement(MqttPacket packet)
    {
        var consumed = TakeAcknowledgement(packet, out var wake, out var room, out var wakeAll);
        room?.TrySetResult();
        wake?.TrySetResult();
        if (wakeAll)
        {
            foreach (var sequence in WaitingSequences())
            {
                sequence.TrySetResult();
            }
        }
        return consumed;
    }

    List<TaskCompletionSource> WaitingSequences()
    {
        lock (_gate)
        {
            return [.. _sequences.Select(Ready).OfType<TaskCompletionSource>()];
        }
    }

    bool TakeAcknowledgement(MqttPacket packet, out TaskCompletionSource? wake, out TaskCompletionSource? room, out bool wakeAll)
    {
        wake = null;
        room = null;
        wakeAll = false;
        switch (packet)
        {
            case MqttConnAckPacket connAck:
                if (connAck.ReasonCode == MqttConnectReasonCode.Success && connAck.ReturnCode == MqttConnectReturnCode.ConnectionAccepted)
                {
                    ReceiveMaximum = connAck.ReceiveMaximum > 0 ? connAck.ReceiveMaximum : ushort.MaxValue;
                    _open = true;
                }
                return false;
            case MqttPubAckPacket or MqttPubRecPacket or MqttPubCompPacket or MqttSubAckPacket or MqttUnsubAckPacket:
                var numbered = (MqttPacketWithIdentifier)packet;
                lock (_gate)
                {
                    if (!_owners.TryGetValue(numbered.PacketIdentifier, out var owner))
                    {
                        return false; // Not ours to judge: MQTTnet logs and ignores unknown acknowledgements.
                    }
                    if (owner.Single is not null || owner.Sequence is not null)
                    {
                        if (packet is not MqttPubAckPacket pubAck)
                        {
                            return false;
                        }
                        _owners.Remove(numbered.PacketIdentifier);
                        _outstandingPublishes--;
                        var success = (int)pubAck.ReasonCode < 0x80;
                        room = TakeRoom();
                        if (owner.Sequence is { } sequence)
                        {
                            sequence.Acknowledged(owner.Index, success);
                            // MQTTnet's waiting publish takes this slot; the sequence goes on with the next acknowledgement.
                            wake = room is null ? Ready(sequence) : null;
                        }
                        else
                        {
                            owner.Single!.TrySetResult(success);
                            wakeAll = room is null && _sequences.Count > 0;
                        }
                        return true;
                    }
                    var wire = numbered.PacketIdentifier;
                    numbered.PacketIdentifier = (ushort)owner.Index;
                    // A PUBREC continues MQTTnet's QoS 2 exchange (PUBREL, PUBCOMP): its identifier stays taken.
                    if (packet is not MqttPubRecPacket)
                    {
                        _owners.Remove(wire);
                        if (packet is MqttPubAckPacket or MqttPubCompPacket)
                        {
                            _wireOfMqttnet.Remove((ushort)owner.Index);
                            _outstandingPublishes--;
                            room = TakeRoom();
                            wakeAll = room is null && _sequences.Count > 0;
                        }
                    }
                }
                return false;
            default:
                return false;
        }
    }

    // Under _gate.
    ushort NextFreeIdentifier()
    {
        do
        {
            _next++;
            if (_next == 0)
            {
                _next = 1;
            }
        }
        while (_owners.ContainsKey(_next));
        return _next;
    }

    // Under _gate: the sequence's waiter to complete (outside the lock) when it can go on. A publish of MQTTnet's
    // waiting for room goes first.
    TaskCompletionSource? Ready(PublishSequence sequence) =>
        sequence.TakeWaiter(_room is null && _outstandingPublishes < ReceiveMaximum, closing: false);

    // Under _gate: MQTTnet's waiting publishes, to wake (outside the lock) now that there is room.
    TaskCompletionSource? TakeRoom()
    {
        var room = _room;
        if (room is null || (_outstandingPublishes >= ReceiveMaximum && !_closed))
        {
            return null;
        }
        _room = null;
        return room;
    }

    void WakeOutsideLock(PublishSequence sequence, bool closing)
    {
        TaskCompletionSource? waiter;
        lock (_gate)
        {
            waiter = sequence.TakeWaiter(brokerHasRoom: true, closing);
        }
        waiter?.TrySetResult();
    }

    void Close()
    {
        List<TaskCompletionSource> waiters = [];
        List<TaskCompletionSource<bool>> singles = [];
        lock (_gate)
        {
            _closed = true;
            foreach (var owner in _owners.Values)
            {
                if (owner.Single is { } single)
                {
                    singles.Add(single);
                }
            }
            if (TakeRoom() is { } room)
            {
                waiters.Add(room);
            }
            foreach (var sequence in _sequences)
            {
                if (sequence.TakeWaiter(brokerHasRoom: true, closing: true) is { } waiter)
                {
                    waiters.Add(waiter);
                }
            }
        }
        foreach (var waiter in waiters)
        {
            waiter.TrySetResult();
        }
        foreach (var single in singles)
        {
            single.TrySetResult(false);
        }
    }

    readonly record struct Owner(PublishSequence? Sequence, int Index, TaskCompletionSource<bool>? Single = null);

    /// <summary>One run of QoS 1 publishes; every member is used under the adapter's lock.</summary>
    sealed class PublishSequence(int count, int window)
    {
        readonly bool[] _accepted = new bool[count];
        TaskCompletionSource? _waiter;
        bool _waitingForAll;

        public int Window { get; } = window;
        public int InFlight { get; set; }
        public bool Failed { get; private set; }

        /// <summary>
        /// A task completed when there is room for the next publish. Its continuation runs on the thread that completes
        /// it, the receive loop reading the PUBACK, so the window refills without waking a thread per acknowledgement.
        /// </summary>
        public Task WaitForSpace()
        {
            _waitingForAll = false;
            _waiter = new TaskCompletionSource();
            return _waiter.Task;
        }

        /// <summary>A task completed when nothing is in flight; its continuation (the caller's next step) runs on the thread pool.</summary>
        public Task WaitForAll()
        {
            _waitingForAll = true;
            _waiter = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            return _waiter.Task;
        }

        public void Acknowledged(int index, bool success)
        {
            InFlight--;
            if (success)
            {
                _accepted[index] = true;
            }
            else
            {
                Failed = true;
            }
        }

        /// <summary>
        /// The waiter to complete now, if any: a sender waiting for room once the window and the broker have room, or on
        /// a refusal; a sender waiting for the end once nothing is in flight; either when the connection closes.
        /// </summary>
        public TaskCompletionSource? TakeWaiter(bool brokerHasRoom, bool closing)
        {
            if (_waiter is not { } waiter)
            {
                return null;
            }
            var ready = closing || (_waitingForAll ? InFlight == 0 : Failed || (brokerHasRoom && InFlight < Window));
            if (!ready)
            {
                return null;
            }
            _waiter = null;
            return waiter;
        }

        public int AcceptedFromFront()
        {
            var accepted = 0;
            while (accepted < _accepted.Length && _accepted[accepted])
            {
                accepted++;
            }
            return accepted;
        }
    }
}
