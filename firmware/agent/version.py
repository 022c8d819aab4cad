# Firmware version reported in telemetry ("fw") and, later, compared by OTA (never goes back).
VERSION = "0.1.0"
