"""Click parameter types shared by commands: a float that must be a finite number (click's float and FloatRange
accept nan and inf, which no advbp option means)."""

from __future__ import annotations

import math

import click


class FiniteFloat(click.ParamType):
    """A finite float, optionally bounded: `--max-error nan` or `--cpus-per-run inf` is refused like any bad value."""

    name = "float"

    def __init__(self, min: float | None = None, min_open: bool = False):
        self.min, self.min_open = min, min_open

    def convert(self, value, param, ctx):
        try:
            v = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(v):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if self.min is not None and (v <= self.min if self.min_open else v < self.min):
            self.fail(f"{value!r} must be {'>' if self.min_open else '>='} {self.min:g}", param, ctx)
        return v


FINITE_PERCENT = FiniteFloat(min=0)
POSITIVE = FiniteFloat(min=0, min_open=True)
NON_NEGATIVE = FiniteFloat(min=0)
