# A device on MQTT over secure WebSocket with paho-mqtt 1.x: trusts only the CA file it is given (no system CAs, no
# skipped checks), subscribes to ID/commands, publishes one reading on ID/telemetry, prints what arrives.
# Usage: wss_device.py ID HOST PORT CAFILE SECONDS
import ssl
import sys
import time

import paho.mqtt.client as mqtt

id, host, port, cafile, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5])

client = mqtt.Client(id + 'nightlight_client', transport='websockets')
client.ws_set_options(path='/mqtt')
client.tls_set(ca_certs=cafile if cafile != '-' else None, cert_reqs=ssl.CERT_REQUIRED)


def on_connect(c, userdata, flags, rc):
    print('connected rc', rc, flush=True)
    c.subscribe(id + '/commands')


def on_subscribe(c, userdata, mid, granted):
    print('subscribed', flush=True)
    c.publish(id + '/telemetry', '{"light": 12}')


def on_message(c, userdata, message):
    print('received', message.topic, message.payload.decode(), flush=True)


client.on_connect = on_connect
client.on_subscribe = on_subscribe
client.on_message = on_message
try:
    client.connect(host, port)
except Exception as e:
    print('connect failed:', type(e).__name__, e, flush=True)
    sys.exit(3)
client.loop_start()
time.sleep(seconds)
client.loop_stop()
