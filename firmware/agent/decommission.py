# Decommissioning (docs/protocol.md "Successor identities", decommission): the device erases what
# would let this flash give its keys or reach the service again, says so if its broker session
# still stands, and stops in safe mode (no onboarding, no retry; the REPL stays reachable).
# Erased: data/helper.bin and a re-enrolment's data/helper.new (overwritten, then removed: without
# the helper the power-up read gives no key; qdid.owner), data/owner.json, the certificate and
# onboarding data, the command seq, a broker move's data/relocate.json, and config.json (no server
# to call). Loaded for the command, dropped after (main.py).
import os
from agent import store
from agent.log import log
from qdid import owner


def run(st, seq, data_dir):
    # An accepted `decommission` (its `accepted` is queued already). Commands still waiting are
    # dropped: nothing runs after an erase.
    st.inbox = []
    st.resync = False
    try:
        owner.erase(data_dir)
        store.clear(data_dir)
        store.set_cmd_seq(data_dir, 0)
        for path in (st.config_path, data_dir + "/relocate.json"):
            try:
                os.remove(path)
            except OSError:
                pass  # absent already
    except OSError as e:
        log("E", "agent", "decommission: erase failed: errno %s", e.args[0] if e.args else "?")
        st.ack(seq, "failed", "erase_failed")
    else:
        st.ack(seq, "done")
    st.safe = "decommissioned"
    st.stop = True
    log(
        "E",
        "agent",
        "safe mode: decommissioned (helper data, certificate, onboarding data, owner.json and "
        "config.json erased); REPL available",
    )
