# The lesson's server (paho-mqtt 1.x): receives telemetry and answers led_on = light < 300.
# Usage: lesson_server.py ID HOST PORT
import json
import sys
import time

import paho.mqtt.client as mqtt

id, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])

client_telemetry_topic = id + '/telemetry'
server_command_topic = id + '/commands'
client_name = id + 'nightlight_server'

mqtt_client = mqtt.Client(client_name)
mqtt_client.connect(host, port)

mqtt_client.loop_start()


def handle_telemetry(client, userdata, message):
    payload = json.loads(message.payload.decode())
    print("Message received:", json.dumps(payload), flush=True)

    command = {'led_on': payload['light'] < 300}
    print("Sending message:", json.dumps(command), flush=True)

    client.publish(server_command_topic, json.dumps(command))


mqtt_client.subscribe(client_telemetry_topic)
mqtt_client.on_message = handle_telemetry
print("Subscribed", flush=True)

while True:
    time.sleep(2)
