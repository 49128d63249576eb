"""The training progress shown by `advbp train` and `advbp sweep`: what the line says (`RunProgress`, plain logic
with an injectable clock, so tests drive it with a fake one) and how it is drawn (`LiveLine`: a rich live line on
a terminal's stderr, nothing but one line per epoch elsewhere).

From an epoch's first block of steps (the trainer starts every epoch with a one-step block, see
trainer.BlockSizer) the line shows the running mean training loss of the epoch, the time since the epoch began,
steps per second, and the time left in the epoch and in the run. Elapsed time and ETA restart with every epoch.
"""

from __future__ import annotations

import time

BAR_WIDTH = 24


def clock_text(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "-:--:--"
    s = int(round(max(seconds, 0.0)))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class RunProgress:
    """The state of one run's progress line: fed by the trainer's Reporter callbacks, read by `line()`."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.epoch = self.epochs = self.steps_per_epoch = 0
        self.step = 0
        self.loss_sum = 0.0
        self.t_epoch = self.t_run = None
        self.epoch_seconds: list[float] = []  # whole epochs of this session, training plus evaluation
        self.last_rate: float | None = None  # steps/s of the previous epoch, until this one has measured its own
        self.finished = False

    # the Reporter callbacks
    def start(self, first_epoch: int, epochs: int, steps_per_epoch: int) -> None:
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch
        self.t_run = self.clock()
        self._begin_epoch(first_epoch + 1)

    def steps(self, n: int, mean_loss: float) -> None:
        self.step += n
        self.loss_sum += mean_loss * n

    def epoch_end(self, row: dict) -> None:
        now = self.clock()
        if self.t_epoch is not None and self.step:
            self.last_rate = self.step / max(row.get("train_seconds") or (now - self.t_epoch), 1e-9)
        self.epoch_seconds.append(float(row.get("seconds") or 0.0))
        if row["epoch"] >= self.epochs:
            self.finished = True
            return
        self.epoch = row["epoch"] + 1
        self.step, self.loss_sum, self.t_epoch = 0, 0.0, now

    def _begin_epoch(self, epoch: int) -> None:
        self.epoch, self.step, self.loss_sum, self.t_epoch = epoch, 0, 0.0, self.clock()

    # what is shown
    def rate(self) -> float | None:
        elapsed = self.clock() - self.t_epoch if self.t_epoch is not None else 0.0
        if self.step and elapsed > 0:
            return self.step / elapsed
        return self.last_rate

    def eta_epoch(self) -> float | None:
        rate = self.rate()
        return None if not rate else (self.steps_per_epoch - self.step) / rate

    def eta_run(self) -> float | None:
        left = self.eta_epoch()
        if left is None:
            return None
        later = self.epochs - self.epoch
        if self.epoch_seconds:
            per_epoch = sum(self.epoch_seconds) / len(self.epoch_seconds)
        else:  # before the first epoch ends: training time alone (evaluation not yet measured)
            per_epoch = self.steps_per_epoch / self.rate()
        return left + later * per_epoch

    def fields(self) -> dict:
        rate = self.rate()
        return {
            "epoch": f"epoch {self.epoch}/{self.epochs}",
            "steps": f"{self.step}/{self.steps_per_epoch}",
            "loss": f"loss {self.loss_sum / self.step:.4f}" if self.step else "loss -",
            "rate": f"{rate:.1f} steps/s" if rate else "- steps/s",
            "elapsed": clock_text(self.clock() - self.t_epoch if self.t_epoch is not None else 0.0),
            "eta": clock_text(self.eta_epoch()),
            "eta_run": clock_text(self.eta_run()),
        }

    def bar(self) -> str:
        done = int(BAR_WIDTH * self.step / max(self.steps_per_epoch, 1))
        return "#" * done + "-" * (BAR_WIDTH - done)

    def line(self) -> str:
        f = self.fields()
        return (f"{f['epoch']} [{self.bar()}] {f['steps']}  {f['loss']}  {f['rate']}  elapsed {f['elapsed']}  "
                f"eta {f['eta']}  (run eta {f['eta_run']})")

    def short(self) -> str:
        """For a sweep's table cell: epoch, percent, loss, rate, eta of the epoch."""
        f = self.fields()
        pct = 100 * self.step / max(self.steps_per_epoch, 1)
        return f"{f['epoch']} {pct:.0f}% {f['loss']} {f['rate']} eta {f['eta']}"


class LiveLine:
    """A run's progress line, redrawn a few times a second at the bottom of stderr when stderr is a terminal;
    messages (`print`) go above it as plain text (no rich markup or highlighting, so "400x400" stays as it is).
    Without a terminal only the messages are written: one line per epoch in a log."""

    def __init__(self, render, console=None):
        from rich.console import Console  # lazy: rich stays off the import path of `advbp --help` and `advbp presets`

        self.console = console or Console(stderr=True)
        self.render = render
        self.live = None

    @property
    def interactive(self) -> bool:
        return self.console.is_terminal

    def __enter__(self):
        if self.interactive:
            from rich.live import Live
            from rich.text import Text

            self.live = Live(console=self.console, refresh_per_second=4, transient=True,
                             get_renderable=lambda: Text(self.render(), no_wrap=True, overflow="ellipsis"))
            self.live.start()
        return self

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.stop()
            self.live = None

    def print(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)
