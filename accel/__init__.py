"""accel: a caching accelerator reverse proxy on Twisted."""

__version__ = "0.1.0"
