"""Progress lines for long loops: steps done, steps/s and ETA, written to a logger at a fixed interval."""

from __future__ import annotations

import logging
import time


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
    """The logger a workflow script uses: INFO lines with timestamps to the rule's ``log:`` file (and stderr)."""
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
    return logger
