"""Flood limits: one log line per reason per interval, one reply per stranger per second."""

from coordinator.ratelimit import RateLimitedLog, ReplyLimiter


def test_one_line_per_key_per_interval_counting_what_was_held_back():
    log = RateLimitedLog(interval=10.0)
    assert log.admit("malformed", now=0.0) == 0
    assert [log.admit("malformed", now=t) for t in (1.0, 2.0, 9.9)] == [None, None, None]
    assert log.admit("late", now=5.0) == 0  # keys are limited apart
    assert log.admit("malformed", now=10.0) == 3
    assert log.admit("malformed", now=12.0) is None


def test_one_reply_per_peer_per_interval():
    replies = ReplyLimiter(interval=1.0)
    assert replies.allow(b"a", now=0.0) and not replies.allow(b"a", now=0.5) and replies.allow(b"b", now=0.5)
    assert replies.allow(b"a", now=1.0)


def test_memory_of_peers_is_bounded():
    replies = ReplyLimiter(interval=1.0, capacity=100)
    for i in range(1000):
        assert replies.allow(i, now=0.0)
    assert len(replies._answered) <= 100


def test_a_burst_is_admitted_then_the_rate_holds():
    from coordinator.ratelimit import TokenBucket

    bucket = TokenBucket(rate=10.0, burst=64)
    assert all(bucket.take(now=0.0) for _ in range(64))  # 64 workers joining at once are all admitted
    assert not bucket.take(now=0.0)
    admitted = sum(bucket.take(now=i / 1000) for i in range(1, 1001))  # a flood over the next second
    assert 9 <= admitted <= 10  # 10 a second, whatever the flood
    assert bucket.take(now=100.0)
