# samples/Lesson/python/server.py: the lesson's server with paho-mqtt 1.x. Run: python3 server.py
import json
import os
import time

import paho.mqtt.client as mqtt

id = os.environ.get('NIGHTLIGHT_ID', '<ID>')
broker = os.environ.get('NIGHTLIGHT_HOST', 'localhost')
port = int(os.environ.get('NIGHTLIGHT_PORT', '1883'))

# Task: connect the server to the broker.
mqtt_client = mqtt.Client(id + 'nightlight_server')
mqtt_client.connect(broker, port)
mqtt_client.loop_start()

# Task: receive telemetry from <ID>/telemetry, and send a command back on <ID>/commands.
def handle_telemetry(client, userdata, message):
    payload = json.loads(message.payload.decode())
    print('Message received:', payload, flush=True)

    command = {'led_on': payload['light'] < 300}
    print('Sending message:', command, flush=True)
    client.publish(id + '/commands', json.dumps(command))

mqtt_client.subscribe(id + '/telemetry')
mqtt_client.on_message = handle_telemetry

while True:
    time.sleep(2)
