# agent.config: config.json and the pinned root CA, with a clear ConfigError for each mistake.
import os
import json
from agent import config
from agent.errors import ConfigError
from fwtest import raises

D = "/tmp/qlink-config-test"
CA = b"\x30\x82\x00\x04\x02\x01\x07\x00"  # long-form length


def setup(doc, ca=CA, raw=None):
    try:
        os.mkdir(D)
    except OSError:
        pass
    with open(D + "/config.json", "wb") as f:
        f.write(raw if raw is not None else json.dumps(doc).encode())
    try:
        os.remove(D + "/ca.der")
    except OSError:
        pass
    if ca is not None:
        with open(D + "/ca.der", "wb") as f:
            f.write(ca)
    return D + "/config.json"


def test_documented_config_loads():
    p = setup(
        {"server": "https://localhost:8443", "root_ca": "ca.der", "telemetry_interval_ms": 2000}
    )
    c = config.load(p, D)
    assert (c.host, c.port, c.prefix) == ("localhost", 8443, "")
    assert c.root_der == CA
    assert c.telemetry_interval_ms == 2000
    assert c.max_messages == 0 and c.max_failures == 0 and c.log_level == "I"


def test_optional_keys():
    p = setup(
        {"server": "https://q.example/api/", "max_messages": 3, "max_failures": 2, "log_level": "D"}
    )
    c = config.load(p, D)
    assert (c.host, c.port, c.prefix) == ("q.example", 443, "/api")
    assert (c.max_messages, c.max_failures, c.log_level) == (3, 2, "D")


def test_plaintext_and_malformed_urls_are_refused():
    for url in (
        "http://localhost:8443",
        "localhost",
        "https://",
        "https://h:x",
        "https://h:0",
        "https://h:70000",
        "https://u@h",
        None,
        5,
    ):
        e = raises(ConfigError, config.load, setup({"server": url}), D)
        assert "server" in str(e)


def test_missing_files_say_what_to_flash():
    e = raises(ConfigError, config.load, D + "/nope.json", D)
    assert "missing" in str(e)
    e = raises(ConfigError, config.load, setup({"server": "https://h"}, ca=None), D)
    assert "root CA" in str(e) and "missing" in str(e)


def test_corrupt_config_is_refused():
    raises(ConfigError, config.load, setup(None, raw=b"{not json"), D)
    raises(ConfigError, config.load, setup(None, raw=b"[1, 2]"), D)


def test_bad_values_are_refused():
    for doc in (
        {"server": "https://h", "telemetry_interval_ms": 10},
        {"server": "https://h", "telemetry_interval_ms": "2000"},
        {"server": "https://h", "telemetry_interval_ms": True},
        {"server": "https://h", "max_messages": -1},
        {"server": "https://h", "log_level": "X"},
        {"server": "https://h", "root_ca": ""},
    ):
        raises(ConfigError, config.load, setup(doc), D)


def test_root_ca_must_be_one_der_certificate():
    for ca in (
        b"",
        b"-----BEGIN CERTIFICATE-----\n",
        CA[:-1],
        CA + b"\x00",
        b"\x30\x80\x00\x00",
        b"\x31\x02\x00\x00",
    ):
        e = raises(ConfigError, config.load, setup({"server": "https://h"}, ca=ca), D)
        assert "DER" in str(e)
