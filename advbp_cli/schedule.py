"""Learning-rate schedules, the same for every backend: `constant`, and `halve_on_plateau`, the paper's CIFAR-10
rule as the author's code (anokland/dfa-torch, `-epoch_step 0`) implements it:

    after every epoch:  m = 0.75 m + 0.25 err_train            (m starts at 100 %)
                        stop  if halvings >= max_halvings or m <= stop_train_error
                        else halve lr if err_train >= m

So the run stops one epoch after the 8th halving, or once the smoothed training error is at most 0.01 %, or at
the epoch cap. The state (lr, halvings, m) travels in every checkpoint's metadata so a resumed run continues the
schedule exactly where the uninterrupted one would be.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from .errors import UsageProblem


@dataclass
class ScheduleState:
    lr: float
    halvings: int = 0
    mean_train_error: float = 100.0  # m, in percent
    stop_reason: str | None = None  # set when the schedule ended the run

    @classmethod
    def start(cls, train_cfg) -> "ScheduleState":
        return cls(lr=train_cfg.lr)

    def to_json(self) -> str:
        return json.dumps(asdict(self))  # floats as repr: exact round trip

    @classmethod
    def from_json(cls, text: str, where: str) -> "ScheduleState":
        try:
            d = json.loads(text)
            state = cls(lr=float(d["lr"]), halvings=int(d["halvings"]), mean_train_error=float(d["mean_train_error"]),
                        stop_reason=d.get("stop_reason"))
        except (ValueError, KeyError, TypeError):
            raise UsageProblem(f"{where} carries an unreadable schedule state {text[:80]!r}") from None
        if not (state.lr > 0 and state.halvings >= 0):
            raise UsageProblem(f"{where} carries an invalid schedule state {text[:80]!r}")
        return state


def after_epoch(state: ScheduleState, train_cfg, train_error: float | None) -> ScheduleState:
    """The state for the next epoch, given this epoch's training error (percent)."""
    if train_cfg.schedule == "constant":
        return state
    if train_error is None:
        raise ValueError("halve_on_plateau needs the epoch's training error")
    m = 0.75 * state.mean_train_error + 0.25 * train_error
    new = ScheduleState(state.lr, state.halvings, m)
    if new.halvings >= train_cfg.max_halvings:
        new.stop_reason = f"the learning rate was halved {new.halvings} times (max_halvings)"
    elif m <= train_cfg.stop_train_error:
        new.stop_reason = f"the smoothed training error reached {m:.4g} % <= {train_cfg.stop_train_error} % (stop_train_error)"
    elif train_error >= m:
        new.lr = state.lr / 2
        new.halvings += 1
    return new
