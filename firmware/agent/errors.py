# The agent's exception policy, after mqtt_as: every socket or TLS failure becomes one LinkError
# at the lowest layer (tlslink, https, mqtt), and the single retry loop in main.py decides what to
# do. Messages never carry secrets; parsers raise with a short reason, not the offending bytes.


class AgentError(Exception):
    pass


class LinkError(AgentError):
    # Network, TLS or wire-protocol failure (refused, reset, time-out, certificate not trusted,
    # malformed HTTP or MQTT packet). Retrying later may succeed.
    pass


class ConfigError(AgentError):
    # config.json or the pinned root CA is missing or invalid: the device was flashed wrongly and
    # retrying will not help.
    pass


class OnboardingError(AgentError):
    # The server answered and refused: `code` is its error code (docs/protocol.md), `detail` its
    # sentence for a person. `status` is the HTTP status (0 when the answer was unusable);
    # `retry_after` the seconds a 429 asked the device to wait (0: none given).
    def __init__(self, code, detail="", status=0, retry_after=0):
        super().__init__(code, detail)
        self.code = code
        self.detail = detail
        self.status = status
        self.retry_after = retry_after

    def __str__(self):
        if self.detail:
            return "%s: %s" % (self.code, self.detail)
        return self.code


class BrokerRefusedError(LinkError):
    # CONNACK with a non-zero return code (MQTT 3.1.1 section 3.2.2.3): `code` 1..5. Code 5 (not
    # authorized) is what a revoked or not yet registered device sees.
    def __init__(self, code, reason):
        super().__init__("mqtt: connection refused: %s (%d)" % (reason, code))
        self.code = code
