"""Search settings: every option with its default (the command line reads them here)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TuneConfig:
    """Every search setting, with its default: the one place the CLI takes them from."""

    data: str
    out: str
    samples: int = 20
    max_concurrent: int | None = None  # None: as many as the resources allow
    epochs: int = 30
    workers_per_trial: int = 1
    gpus_per_trial: int = 0
    space: str | None = None
    seed: int = 0
    grace_period: int = 2  # ASHA: epochs every trial gets before it can be stopped
