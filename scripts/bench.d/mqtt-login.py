"""Runs a paho-mqtt script (the reference baseline's ingest.py, which has no MQTT login) with
a login on the secured broker: every paho Client it creates logs in as BENCH_MQTT_USERNAME
with BENCH_MQTT_PASSWORD (from the environment; without a username, nothing changes), and a
refused subscription ends the process instead of leaving a subscriber that receives nothing.

    python mqtt-login.py SCRIPT [ARGS...]
"""
import os
import runpy
import sys

import paho.mqtt.client as mqtt

USERNAME = os.environ.get("BENCH_MQTT_USERNAME", "")
PASSWORD = os.environ.get("BENCH_MQTT_PASSWORD", "")
_Client = mqtt.Client


class LoginClient(_Client):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if USERNAME:
            self.username_pw_set(USERNAME, PASSWORD)

    @property
    def on_subscribe(self):
        return _Client.on_subscribe.fget(self)

    @on_subscribe.setter
    def on_subscribe(self, func):
        def checked(client, userdata, mid, reason_codes, *rest):
            refused = [rc for rc in reason_codes if getattr(rc, "is_failure", False)]
            if refused:
                print(f"mqtt-login: subscription refused: {refused}", flush=True)
                os._exit(1)
            return func(client, userdata, mid, reason_codes, *rest)

        _Client.on_subscribe.fset(self, checked if func else func)


mqtt.Client = LoginClient
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
