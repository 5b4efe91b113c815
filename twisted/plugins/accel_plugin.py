"""The twistd plugin: ``twistd -n accel``. Imports nothing heavy."""

from twisted.application.service import ServiceMaker

accel = ServiceMaker("accel", "accel.tap", "Caching accelerator reverse proxy.", "accel")
