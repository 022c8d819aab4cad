# Certificate renewal (docs/protocol.md "Onboarding API", renew_at_pct, and "Command channel",
# renew): hello + proof again, by the onboarding path, while the stored certificate still holds.
# The server answers with a new certificate once the renewal is due on its side too (or a renew
# command is outstanding), else with the same one. Then, as after a failure, the device keeps the
# certificate it has and waits a tenth of the life it has left, at least a minute, before it asks
# again: a clock that disagrees with the server's costs a bounded number of requests, and the
# retries come closer together as the end nears. Loaded for a renewal, dropped after (main.py).
from micropython import const
from agent import clock
from agent.errors import LinkError, OnboardingError
from agent.log import log

_RETRY_MIN_S = const(60)  # s, shortest wait before a renewal is tried again


def run(st, stored, onboard):
    # onboard: () -> agent.store.Stored, the onboarding path (hello, proof, store). Returns the
    # Stored to use from now on; reports the outcome of a renew command (st.renew_seq) on the
    # event queue, where it goes out once a session is up (with the new certificate).
    seq = st.renew_seq
    st.renew_seq = 0
    now = clock.now()
    retry = now + max(_RETRY_MIN_S, (stored.not_after - now) // 10)
    try:
        new = onboard()
    except (OnboardingError, LinkError) as e:
        if isinstance(e, OnboardingError) and e.retry_after:
            retry = max(retry, now + e.retry_after)
        st.renew_retry = retry
        log("W", "agent", "renewal failed (%s); next try in %d s", e, retry - now)
        if seq:
            st.ack(seq, "failed", e.code if isinstance(e, OnboardingError) else "unreachable")
        return stored
    if new.cert_der == stored.cert_der:
        st.renew_retry = retry
        log("W", "agent", "renewal gave the same certificate; next try in %d s", retry - now)
        if seq:
            st.ack(seq, "failed", "same_certificate")
        return new
    # A new certificate may be due at once by the policy (a short life, a start set back for
    # lagging clocks): not more than one renewal a minute then, whatever the server agrees to.
    st.renew_retry = now + _RETRY_MIN_S
    log("I", "agent", "renewed certificate; valid until %d", new.not_after)
    if seq:
        st.ack(seq, "done")
    return new
