"""Progress lines for long loops (steps done, steps/s and ETA, written to a logger at a fixed interval), and the
logger of a workflow script, which writes to the rule's log file."""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType


class Progress:
    """Log ``label: step k/n (p%), r steps/s, ETA hh:mm:ss`` at most every ``every_s`` seconds.

    Snakemake logs are files, not terminals, so a carriage-return progress bar would be unreadable
    there; periodic plain lines are what a user tails on a cluster.
    """

    def __init__(self, total: int, label: str, logger: logging.Logger, every_s: float = 10.0, start: int = 0):
        self.total = total
        self.label = label
        self.logger = logger
        self.every_s = every_s
        self.start_step = start
        self.t0 = time.monotonic()
        self.last = -float("inf")

    def update(self, step: int, **extra: float) -> None:
        now = time.monotonic()
        if now - self.last < self.every_s and step < self.total:
            return
        self.last = now
        done = step - self.start_step
        rate = done / max(now - self.t0, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        eta_txt = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta != float("inf") else "?"
        fields = "".join(f", {k} {v:.4g}" for k, v in extra.items())
        self.logger.info(
            "%s: step %d/%d (%.0f%%), %.3g steps/s, ETA %s%s",
            self.label, step, self.total, 100.0 * step / max(self.total, 1), rate, eta_txt, fields,
        )


def script_logger(log_path: str | None, name: str = "spatial_msma") -> logging.Logger:
    """The logger a workflow script uses: INFO lines with timestamps to the rule's ``log:`` file (and stderr).

    It also becomes the script's last word: an exception that ends the script is written to the log (message
    and traceback), because a failed job's Snakemake error says "see the log", and without this the log would
    hold only what came before the failure (see :func:`log_uncaught_exceptions`).
    """
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.handlers.clear()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_path:
        handlers.append(logging.FileHandler(log_path, mode="w"))
    for handler in handlers:
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    logger.propagate = False
    log_uncaught_exceptions(logger)
    return logger


def log_uncaught_exceptions(logger: logging.Logger) -> None:
    """Send an exception that would end the process to ``logger`` (ERROR, with its traceback) instead of
    Python's plain print to stderr; the logger's stderr handler still shows it there."""

    def hook(kind: type[BaseException], value: BaseException, traceback: TracebackType | None) -> None:
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, value, traceback)
            return
        logger.error("failed: %s: %s", kind.__name__, value, exc_info=(kind, value, traceback))

    sys.excepthook = hook
