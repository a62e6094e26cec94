"""`TINYCOMP_LOGS=graph,passes,llvm,asm,compile`: print compile stages through `logging`, like TORCH_LOGS.

Silent by default. Each channel is the logger `tinycomp.<channel>`; the variable is read at every
compile, so it can be set from inside a running program too. `all` turns on every channel.
"""

from __future__ import annotations

import logging
import os
import sys

CHANNELS = ("graph", "passes", "llvm", "asm", "compile")
_handler: logging.Handler | None = None
_warned: set[str] = set()  # the TINYCOMP_LOGS values already warned about: once each, not per log call


def enabled_channels() -> set[str]:
    raw = os.environ.get("TINYCOMP_LOGS", "")
    names = {c.strip().lower() for c in raw.split(",") if c.strip()}
    if "all" in names:
        return set(CHANNELS)
    unknown = names - set(CHANNELS)
    if unknown and raw not in _warned:
        _warned.add(raw)
        logging.getLogger("tinycomp").warning(
            "TINYCOMP_LOGS: unknown channel(s) %s; channels are %s", ", ".join(sorted(unknown)), ", ".join(CHANNELS))
    return names & set(CHANNELS)


def channel(name: str) -> logging.Logger | None:
    """The logger for `name` if TINYCOMP_LOGS enables it (attaching a stderr handler once), else None."""
    global _handler
    if name not in enabled_channels():
        return None
    logger = logging.getLogger(f"tinycomp.{name}")
    if _handler is None:
        _handler = logging.StreamHandler(sys.stderr)
        _handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
        root = logging.getLogger("tinycomp")
        root.addHandler(_handler)
        root.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def log(name: str, message: str, *args: object) -> None:
    logger = channel(name)
    if logger is not None:
        logger.info(message, *args)
