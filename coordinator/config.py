"""The service's settings: how the coordinator listens, supervises and checkpoints, validated once.

What decides a run's numbers is not here but in `coordinator.training.Training`
(`lenet.config.TrainConfig` plus the shard count); these settings only decide
how the service gets there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from coordinator.keys import CurveServer
from coordinator.runs import RunIdentity


@dataclass(frozen=True)
class ServiceConfig:
    bind: str = "tcp://127.0.0.1:*"
    min_workers: int = 1
    heartbeat_timeout: float = 10.0
    task_timeout: float = 30.0
    checkpoint_dir: Path | None = None
    checkpoint_every: int = 0  # steps; 0: only at epoch ends
    curve: CurveServer | None = None  # CURVE encryption and the workers admitted
    max_workers: int = 1024  # members at once (a relay would count as one)
    verify_fraction: float = 0.0  # units computed twice and compared bit for bit
    registrations_per_second: float = 32.0  # after a burst: 64 workers joining at once are admitted
    registration_burst: int = 128
    checkpoint_key: bytes | None = None  # signs checkpoints (HMAC); with it, unsigned ones are refused
    run: RunIdentity | None = None  # names the checkpoints; None: a fresh run of the training's settings
    stuck_after: int = 10  # units expired with every answer refused, none accepted: the run cannot progress

    def __post_init__(self) -> None:
        if self.min_workers < 1:
            raise ValueError(f"min workers must be >= 1, got {self.min_workers}")
        if not (0 < self.heartbeat_timeout < math.inf and 0 < self.task_timeout < math.inf):  # NaN fails too
            raise ValueError(f"timeouts must be > 0, got {self.heartbeat_timeout} and {self.task_timeout}")
        if self.max_workers < 1:
            raise ValueError(f"max workers must be >= 1, got {self.max_workers}")
        if not 0.0 <= self.verify_fraction <= 1.0:
            raise ValueError(f"verify fraction must be between 0 and 1, got {self.verify_fraction}")
        if self.stuck_after < 1:
            raise ValueError(f"stuck-after count must be >= 1, got {self.stuck_after}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint interval must be >= 0, got {self.checkpoint_every}")
