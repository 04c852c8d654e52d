"""The metrics log: ``<run>/metrics.jsonl``, one JSON object per logged step.

Each record holds ``step`` (optimiser steps done), the mean of every loss term over the steps since
the previous record (averaged over the ranks too), ``images_per_s`` (all ranks together), ``lr``
(per optimiser: ``lr``, and ``disc_lr`` for models with a discriminator) and ``time`` (training
seconds since the run began, resumes included).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fastvae.train.checkpoint import METRICS_NAME, atomic_write

__all__ = ["METRICS_NAME", "MetricsLog", "read_metrics"]


def _json_number(value: float) -> float | str:
    """JSON has no NaN or infinity: those are written as the strings ``"nan"``, ``"inf"``, ``"-inf"``."""
    return value if math.isfinite(value) else str(value)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics log, in order (an empty list when the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsLog:
    """Appends records to a metrics log.

    Args:
        path: the ``metrics.jsonl`` file.
        resume_step: ``None`` starts a new log (truncating any old one); a step keeps the records up
            to and including it and drops later ones, which an interrupted run logged after its last
            checkpoint and the resumed run will log again.
    """

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        kept = [] if resume_step is None else [r for r in read_metrics(self.path) if r["step"] <= resume_step]
        text = "".join(json.dumps(record) + "\n" for record in kept)
        atomic_write(self.path, lambda tmp: tmp.write_text(text))

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (numbers that are not finite become strings) and flush it."""
        clean = {key: _json_number(value) if isinstance(value, float) else value for key, value in record.items()}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(clean) + "\n")
