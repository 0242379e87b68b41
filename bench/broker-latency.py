#!/usr/bin/env python3
"""Splits round-trip latency through an MQTT broker into its legs, from a packet capture on loopback.

Given a pcap of the server's connection to the broker and of some devices' connections (see bench/broker-latency.sh),
it matches each device's reading to the server's answer by device id, in order, and reports:
  - device round trip: the device's PUBLISH on {id}/telemetry to the PUBLISH on {id}/commands it receives;
  - broker in:  the device's reading leaving the device to the same reading reaching the server's connection;
  - server:     the reading reaching the server's connection to its command leaving it;
  - broker out: the command leaving the server to it reaching the device's connection.
Times are when the bytes were written to loopback, so "server" includes the kernel and the process, and "broker" the
broker's queues. Needs only the standard library; assumes the server answers every reading.
usage: broker-latency.py CAPTURE.pcap SERVER_PORT [BROKER_PORT]
"""
import collections
import struct
import sys


def segments(path):
    """(time, source port, destination port, seq, payload) of each IPv4 TCP segment with data."""
    with open(path, 'rb') as f:
        header = f.read(24)
        nano = struct.unpack('<I', header[:4])[0] == 0xa1b23c4d
        link = struct.unpack('<I', header[20:24])[0]
        skip = 14 if link == 1 else 16  # Ethernet (lo) or Linux cooked capture (any)
        while len(record := f.read(16)) == 16:
            seconds, fraction, length, _ = struct.unpack('<IIII', record)
            data = f.read(length)
            ip = data[skip:]
            if not ip or ip[0] >> 4 != 4:
                continue
            tcp = ip[(ip[0] & 15) * 4:]
            source, destination, seq = struct.unpack('>HHI', tcp[:8])
            payload = tcp[(tcp[12] >> 4) * 4:]
            if payload:
                yield seconds + fraction / (1e9 if nano else 1e6), source, destination, seq, payload


def publishes(chunks):
    """(time, topic) of each PUBLISH in one direction of a stream; a packet's time is that of its last segment."""
    buffer, start, found = bytearray(), 0, []
    for time, payload in chunks:
        buffer += payload
        while len(buffer) - start >= 2:
            i, multiplier, remaining, complete = start + 1, 1, 0, False
            while i < len(buffer):
                byte = buffer[i]
                remaining += (byte & 127) * multiplier
                multiplier *= 128
                i += 1
                if byte < 128:
                    complete = True
                    break
            if not complete or len(buffer) < i + remaining:
                break
            if buffer[start] >> 4 == 3:
                topic_length = struct.unpack('>H', buffer[i:i + 2])[0]
                found.append((time, buffer[i + 2:i + 2 + topic_length].decode('utf-8', 'replace')))
            start = i + remaining
        if start > 1 << 16:
            del buffer[:start]
            start = 0
    return found


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] if values else float('nan')


def report(name, pairs):
    """pairs: (time, delay in s). Prints percentiles and the worst tenths of a second."""
    delays = [d * 1000 for _, d in pairs]
    if not delays:
        print(f'{name:12} no matches')
        return
    worst = collections.defaultdict(float)
    for time, delay in pairs:
        worst[int(time * 10)] = max(worst[int(time * 10)], delay * 1000)
    top = sorted(sorted(worst.items(), key=lambda kv: -kv[1])[:5])
    print(f'{name:12} n={len(delays):7}  p50 {percentile(delays, .5):7.2f}  p99 {percentile(delays, .99):7.2f}  max {max(delays):7.1f} ms'
          f'   worst 0.1 s: ' + '  '.join(f'{k / 10 % 100:.1f}s:{v:.0f}' for k, v in top))


def device_of(topic):
    return topic.split('/', 1)[0]


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    capture, server = sys.argv[1], int(sys.argv[2])
    broker = int(sys.argv[3]) if len(sys.argv) > 3 else 1883
    streams, expected = collections.defaultdict(list), {}
    for time, source, destination, seq, payload in segments(capture):
        key = (source, destination)
        # Loopback does not reorder; a retransmission repeats bytes already seen.
        if key in expected and (seq - expected[key]) % (1 << 32) > 1 << 31:
            continue
        expected[key] = (seq + len(payload)) % (1 << 32)
        streams[key].append((time, payload))

    readings_in = [(t, device_of(topic)) for t, topic in publishes(streams[(broker, server)]) if topic.endswith('/telemetry')]
    commands_out = [(t, device_of(topic)) for t, topic in publishes(streams[(server, broker)]) if topic.endswith('/commands')]
    waiting, server_pairs = collections.defaultdict(collections.deque), []
    arrived, answered = collections.defaultdict(list), collections.defaultdict(list)
    for time, kind, device in sorted([(t, 0, d) for t, d in readings_in] + [(t, 1, d) for t, d in commands_out]):
        if kind == 0:
            waiting[device].append(time)
            arrived[device].append(time)
        elif waiting[device]:
            start = waiting[device].popleft()
            server_pairs.append((start, time - start))
            answered[device].append(time)

    round_trips, broker_in, broker_out, devices = [], [], [], 0
    for (source, destination), chunks in streams.items():
        if destination != broker or source == server:
            continue
        sent = [(t, device_of(topic)) for t, topic in publishes(chunks) if topic.endswith('/telemetry')]
        received = [t for t, topic in publishes(streams[(broker, source)]) if topic.endswith('/commands')]
        if not sent or not received:
            continue
        device = sent[0][1]
        devices += 1
        for times, later, pairs in (([t for t, _ in sent], arrived[device], broker_in),
                                    (answered[device], received, broker_out),
                                    ([t for t, _ in sent], received, round_trips)):
            j = 0
            for time in times:
                while j < len(later) and later[j] < time:
                    j += 1
                if j < len(later):
                    pairs.append((time, later[j] - time))
                    j += 1
    print(f'{len(readings_in)} readings reached the server, {len(commands_out)} commands left it; {devices} devices captured')
    report('round trip', round_trips)
    report('broker in', broker_in)
    report('server', server_pairs)
    report('broker out', broker_out)


if __name__ == '__main__':
    main()
