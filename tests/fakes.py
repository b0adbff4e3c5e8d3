"""Stand-ins the unit tests share."""


class Clock:
    """A clock the test moves by hand: pass it where code takes `clock`, then set or advance `now`."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
