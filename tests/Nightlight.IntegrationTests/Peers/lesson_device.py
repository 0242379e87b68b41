# A nightlight device written the lesson's way (paho-mqtt 1.x), with the light level and broker given on the
# command line instead of a sensor and test.mosquitto.org. Usage: lesson_device.py ID HOST PORT LIGHT COUNT
import json
import sys
import time

import paho.mqtt.client as mqtt

id, host, port, light, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])

client_telemetry_topic = id + '/telemetry'
server_command_topic = id + '/commands'
client_name = id + 'nightlight_client'

mqtt_client = mqtt.Client(client_name)
mqtt_client.connect(host, port)

mqtt_client.loop_start()

print("MQTT connected!", flush=True)


def handle_command(client, userdata, message):
    payload = json.loads(message.payload.decode())
    print("Message received:", json.dumps(payload), flush=True)


mqtt_client.subscribe(server_command_topic)
mqtt_client.on_message = handle_command

for _ in range(count):
    telemetry = json.dumps({'light': light})
    print("Sending telemetry ", telemetry, flush=True)
    mqtt_client.publish(client_telemetry_topic, telemetry)
    time.sleep(0.2)

time.sleep(1)
mqtt_client.loop_stop()
