# samples/Lesson/python/device.py: the lesson's nightlight device with paho-mqtt 1.x. Run: python3 device.py
import json
import os
import time

import paho.mqtt.client as mqtt

id = os.environ.get('NIGHTLIGHT_ID', '<ID>')
broker = os.environ.get('NIGHTLIGHT_HOST', 'localhost')
port = int(os.environ.get('NIGHTLIGHT_PORT', '1883'))
light = 100  # stands in for the light sensor

# Task: connect your device to the broker.
client_name = id + 'nightlight_client'
mqtt_client = mqtt.Client(client_name)
mqtt_client.connect(broker, port)
mqtt_client.loop_start()
print('MQTT connected!', flush=True)

# Task: handle commands from <ID>/commands.
def handle_command(client, userdata, message):
    payload = json.loads(message.payload.decode())
    print('Message received:', payload, flush=True)
    print('LED on' if payload['led_on'] else 'LED off', flush=True)

mqtt_client.subscribe(id + '/commands')
mqtt_client.on_message = handle_command

# Task: send telemetry, {"light": N} on <ID>/telemetry every 5 seconds.
while True:
    telemetry = json.dumps({'light': light})
    print('Sending telemetry', telemetry, flush=True)
    mqtt_client.publish(id + '/telemetry', telemetry)
    time.sleep(5)
