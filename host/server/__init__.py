"""The qlink server: device onboarding API, CA, registry, managed broker and its policy."""


class ServerError(Exception):
    """Base of every error the server raises on purpose; str() is a sentence for an operator."""
