"""Options shared by every scenario (set once from the command line)."""

from __future__ import annotations

from dataclasses import dataclass

from ._db import Databases


@dataclass(frozen=True)
class Options:
    """What ``bin/bench`` was asked for."""

    runs: int = 3
    quick: bool = False
    rate: float = 10_000.0
    sustained_seconds: float = 30.0
    # --pg VERSION: scenarios that start a server of their own (producers) use that major too.
    pg: str = ""


@dataclass(frozen=True)
class Bench:
    """Handed to every scenario: the databases and the options."""

    db: Databases
    opts: Options


Figures = dict[str, float]
