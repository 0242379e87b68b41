# A nightlight device that speaks HTTP instead of MQTT, written the way a learner would with `requests`.
# Usage: http_device.py SERVER ID LIGHT COUNT [SECRET]
#   SERVER: http://127.0.0.1:5000 (nightlight up) or :5001 (nightlight server); SECRET: from `nightlight devices add ID`.
import json
import sys

import requests

server, id, light, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
auth = (id, sys.argv[5]) if len(sys.argv) > 5 else None

session = requests.Session()  # one keep-alive connection for every request
for _ in range(count):
    telemetry = {'light': light}
    print("Sending telemetry ", json.dumps(telemetry), flush=True)
    response = session.post(f"{server}/api/devices/{id}/telemetry", json=telemetry, auth=auth, timeout=10)
    if response.status_code != 202:
        print("Refused:", response.status_code, response.text, flush=True)
        sys.exit(1)
    # Long-poll: the server answers as soon as it has a command, or with 204 after the wait.
    command = session.get(f"{server}/api/devices/{id}/commands/next", params={'wait': '20s'}, auth=auth, timeout=30)
    if command.status_code == 200:
        print("Message received:", json.dumps(command.json()), flush=True)
    else:
        print("No command:", command.status_code, flush=True)
