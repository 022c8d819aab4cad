"""The qlink server: the device and operator APIs over one application layer (store, CA,
policy drivers), and the managed broker."""


class ServerError(Exception):
    """Base of every error the server raises on purpose; str() is a sentence for an operator."""
