"""qlink host side: the server (device API, CA, registry, broker policy) and the `qlink` CLI."""

__version__ = "0.1.0"
