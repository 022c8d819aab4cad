"""A certificate replaced by renewal must not keep opening the broker: once the device holds
its new certificate, the old serial is on the CRL and the broker refuses it."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from attacksuite import Attack

from hil.fleet import Fleet
from hil.serverproc import ServerProcess

# Certificates of 864 s that the server replaces from 0.9 s after issue: short enough to renew
# at once, long enough that no refusal below comes from an expiry.
VALIDITY_DAYS = "0.01"
RENEWAL_DAYS = "0.00999"


@pytest.fixture(scope="module")
def renewing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    proc = ServerProcess(
        tmp_path_factory.mktemp("qlink-renewal"),
        extra_args=["--cert-days", VALIDITY_DAYS, "--renewal-days", RENEWAL_DAYS],
    ).start()
    yield Fleet(proc, batch="renewing", size=2)
    assert proc.stop() in (0, -15), proc.log_tail()


def test_replaced_certificate_no_longer_opens_the_broker(attack: Attack, renewing: Fleet) -> None:
    attack.expect(
        "certificate replaced by renewal",
        "the old certificate is refused by the broker once the device holds its new one",
    )
    device = renewing.take()
    first = device.onboard()
    assert first.status == 200, first.body
    device.mqtt_connect(first).disconnect()  # the first certificate works
    time.sleep(1.0)
    second = device.onboard()
    assert second.status == 200, second.body
    assert second.body["certificate_b64"] != first.body["certificate_b64"]
    time.sleep(0.3)  # the broker re-reads its CRL on SIGHUP
    try:
        device.mqtt_connect(first).disconnect()
        old = "accepted"
    except (ConnectionError, OSError) as e:
        old = f"refused ({type(e).__name__})"
    client = device.mqtt_connect(second)
    client.disconnect()
    attack.observe(f"old certificate {old}; new certificate accepted")
    assert old.startswith("refused")
