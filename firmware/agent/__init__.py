# qlink device agent: onboarding client, MQTT client, telemetry, persistent store.
# Modules are imported where they are needed; onboarding is loaded only when the device has no
# certificate and dropped afterwards (see main.py) to keep the always-loaded set small.
