"""host.server.ratelimit: token buckets by key, with a clock the test turns."""

from __future__ import annotations

from host.server.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_whole_minute_may_come_at_once_then_the_rate_holds() -> None:
    clock = Clock()
    limiter = RateLimiter(60, clock=clock)
    assert [limiter.take("a") for _ in range(60)] == [0] * 60
    assert limiter.take("a") == 1  # one token a second: retry in 1 s
    assert limiter.take("b") == 0  # another key has its own bucket
    clock.t += 1.0
    assert limiter.take("a") == 0
    assert limiter.take("a") == 1


def test_retry_after_is_the_wait_for_one_token() -> None:
    clock = Clock()
    limiter = RateLimiter(6, clock=clock)  # one token every 10 s
    for _ in range(6):
        assert limiter.take("k") == 0
    assert limiter.take("k") == 10
    clock.t += 4.0
    assert limiter.take("k") == 6


def test_zero_is_off() -> None:
    limiter = RateLimiter(0)
    assert not limiter.enabled
    assert all(limiter.take("k") == 0 for _ in range(1000))
    assert len(limiter) == 0


def test_the_number_of_buckets_is_bounded() -> None:
    clock = Clock()
    limiter = RateLimiter(10, max_keys=100, clock=clock)
    for i in range(1000):
        limiter.take(f"k{i}")
    assert len(limiter) <= 100
    clock.t += 120  # all refilled: the same as no bucket, they go first
    limiter.take("new")
    for i in range(101):
        limiter.take(f"m{i}")
    assert len(limiter) <= 100
