"""Progress display for long work: a tqdm bar on a terminal, plain lines in a log.

:class:`EpochProgress` follows a training run epoch by epoch; :class:`IterationProgress`
follows an optimiser's iterations (the evaluation's probe)."""

from __future__ import annotations

import sys
import time


class EpochProgress:
    """An epoch progress bar (tqdm) on a terminal; one plain line per epoch in a log.
    Inside a long epoch, ``step`` shows the steps done: in the bar's description on a
    terminal, or a line every ``LOG_EVERY`` seconds in a log."""

    LOG_EVERY = 10.0
    """Seconds between a log's step lines (an epoch shorter than this prints none)."""
    BAR_EVERY = 0.5
    """Seconds between the terminal bar's step updates."""

    SHOWN = ("train/loss", "test/loss", "val/loss", "test/l0", "lr")
    """The metrics of an epoch's row that the bar (or line) shows."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True):
        self.enabled = enabled
        self.total = total
        self.start = time.perf_counter()
        self.epoch = initial + 1  # the epoch the next steps belong to
        self.epoch_start = self.last_shown = self.start
        self.bar = (
            terminal_bar(total=total, initial=initial, unit="epoch")
            if enabled
            else None
        )

    def step(self, done: int, steps: int) -> None:
        """``done`` of the current epoch's ``steps`` have run (throttled display)."""
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.bar is not None:
            if now - self.last_shown >= self.BAR_EVERY or done == steps:
                self.bar.set_description_str(f"step {done}/{steps}")
                self.last_shown = now
        elif now - self.last_shown >= self.LOG_EVERY and done < steps:
            print(
                f"epoch {self.epoch}/{self.total} step {done}/{steps} "
                f"({now - self.epoch_start:.1f}s into the epoch)",
                flush=True,
            )
            self.last_shown = now

    def update(self, row: dict) -> None:
        if not self.enabled:
            return
        self.epoch = row["epoch"] + 1
        self.epoch_start = self.last_shown = time.perf_counter()
        shown = {k.replace("/", " "): row[k] for k in self.SHOWN if k in row}
        if self.bar is not None:
            self.bar.set_description_str("", refresh=False)
            self.bar.set_postfix(
                {k: f"{v:.4g}" for k, v in shown.items()}, refresh=False
            )
            self.bar.update(1)
        else:
            parts = " ".join(f"{k}={v:.5g}" for k, v in shown.items())
            elapsed = time.perf_counter() - self.start
            print(
                f"epoch {row['epoch']}/{self.total} {parts} ({elapsed:.1f}s)",
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class IterationProgress:
    """A tqdm bar of an optimiser's iterations on a terminal; one line at the end
    otherwise. ``label`` None shows nothing. ``what`` describes the problem in the
    final line (e.g. "60000 samples x 64 features")."""

    def __init__(self, label: str | None, total: int, what: str):
        self.label, self.what = label, what
        self.start = time.perf_counter()
        self.bar = (
            terminal_bar(total=total, desc=label, unit="it", leave=False)
            if label
            else None
        )

    def update(self, *_) -> None:
        """One iteration done (its arguments, e.g. scipy's callback's, are ignored)."""
        if self.bar is not None:
            self.bar.update(1)

    def close(self, iterations: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.label:
            seconds = time.perf_counter() - self.start
            print(
                f"{self.label} ({self.what}): {iterations} L-BFGS iterations, "
                f"loss {loss:.4g} ({seconds:.1f}s)",
                flush=True,
            )


def terminal_bar(**options):
    """A tqdm bar when stderr is a terminal, else None (the caller prints lines)."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(dynamic_ncols=True, **options)
