# The lesson's virtual nightlight as a learner runs it against CounterFit: the light sensor on port 0 and the LED on
# port 5, reached with the HTTP calls the counterfit-connection package makes (POST /connect, GET /sensor_value,
# POST /actuator_value with {'value': bool}), and paho-mqtt 1.x for telemetry and commands.
# Usage: lesson_counterfit_device.py ID MQTT_HOST MQTT_PORT COUNTERFIT_HOST COUNTERFIT_PORT SECONDS
import json
import sys
import time

import paho.mqtt.client as mqtt
import requests

id, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
base_url = f'http://{sys.argv[4]}:{sys.argv[5]}/'
seconds = float(sys.argv[6])

# CounterFitConnection.init(host, port)
requests.post(base_url + 'connect')


def light_level():
    # GroveLightSensor(0).light -> CounterFitConnection.get_sensor_int_value(0)
    response = requests.get(base_url + 'sensor_value?port=' + str(0))
    return int(response.json()['value'])


def led(on):
    # GroveLed(5).on() / .off() -> CounterFitConnection.set_actuator_boolean_value(5, on)
    requests.post(base_url + 'actuator_value?port=' + str(5), json={'value': on})


mqtt_client = mqtt.Client(id + 'nightlight_client')
mqtt_client.connect(host, port)
mqtt_client.loop_start()
print("MQTT connected!", flush=True)


def handle_command(client, userdata, message):
    payload = json.loads(message.payload.decode())
    print("Message received:", json.dumps(payload), flush=True)
    led(payload['led_on'])


mqtt_client.subscribe(id + '/commands')
mqtt_client.on_message = handle_command

end = time.time() + seconds
while time.time() < end:
    telemetry = json.dumps({'light': light_level()})
    print("Sending telemetry ", telemetry, flush=True)
    mqtt_client.publish(id + '/telemetry', telemetry)
    time.sleep(0.2)

mqtt_client.loop_stop()
