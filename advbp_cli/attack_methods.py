"""The attack registry: every white-box attack advbp runs, one entry each. An entry gives the name the CLI offers
(`advbp attack --method`, `advbp eval --method`), the set file names (`<name>-eps<eps>`), the manifest's
description of the attack and the function that computes the adversarial inputs; a new attack is one
`register_attack(AttackMethod(...))`.

All three attacks work under the L-inf ball of radius eps around each input x, in the network's input units, and
use each sample's own input gradient dJ_i/dx_i (Backend.sample_input_gradients, Backend.linf_attack), so a set does
not depend on the batch size:
- fgsm: z = x + eps sign(dJ/dx) (Goodfellow et al. 2014), one gradient reused for every eps;
- bim:  z_0 = x, z_{t+1} = P(z_t + a sign(dJ/dz_t)) for t < K (Kurakin et al. 2016), where P clamps to the
        eps-ball around x and to the pixel box (advbp_cli.attack.clip_rule; none for ZCA inputs);
- pgd:  bim from a uniform random start z_0 = P(x + U[-eps, eps]^d) (Madry et al. 2018), R restarts, keeping for
        each sample the worst case: a misclassified restart over a correct one, then the higher loss.
The iterations are backends/step.linf_attack, written once on the backends' primitives.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator

import numpy as np

from .attack import ATTACK_MASK_EPOCH, fgsm_signs, perturb
from .attack_sets import eps_tag
from .errors import UsageProblem
from .evaluate import evaluate_arrays
from .rng import STREAM_ATTACK, DropoutMasks, RandomStarts

# The step size when --step-size is left out: a = 2.5 eps / K, so K steps can cross the ball's diameter (2 eps)
# with room to spare; a rule of thumb of the PGD literature, recorded in every manifest.
STEP_RULE = 2.5
STEP_RULE_TEXT = "2.5 eps / steps"
RESTART_RULE = ("for each sample, the restart whose final iterate the source network (evaluation mode) "
                "misclassifies, else the one with the highest loss J_i (the gradient's loss)")


@dataclass(frozen=True)
class AttackParams:
    """How one attack is run; the fields a method does not take are None."""

    method: str
    loss: str = "model"  # whose input gradient: the network's own objective or another loss on its logits
    batch_size: int = 1000  # samples per gradient computation: memory only
    model_mode: str = "eval"  # eval: dropout off; train: dropout as in training (masks from the run's seed)
    steps: int | None = None
    step_size: float | None = None  # None: STEP_RULE * eps / steps, per set
    restarts: int | None = None
    seed: int | None = None

    def step_size_for(self, eps: float) -> float:
        return self.step_size if self.step_size is not None else STEP_RULE * eps / self.steps


@dataclass
class Adversarial:
    """One attack's inputs at one eps, with what the manifest records about this set (per_set)."""

    eps: float
    z: np.ndarray
    per_set: dict = field(default_factory=dict)


@dataclass
class Started:
    """An attack under way: what holds for all its sets (e.g. FGSM's zero-gradient count), and its sets, computed
    one at a time as they are iterated."""

    info: dict
    sets: Iterator[Adversarial]


@dataclass(frozen=True)
class AttackMethod:
    name: str
    title: str
    reference: str
    formula: str
    iterative: bool  # takes --steps and --step-size
    random_start: bool  # takes --restarts and --seed
    run: Callable  # (method, params, gnet, x, y, eps_list, clip, train_cfg, progress) -> Started

    def set_name(self, eps: float) -> str:
        return f"{self.name}-eps{eps_tag(eps)}"

    def describe(self, params: AttackParams) -> dict:
        """The manifest's attack-wide fields of this method (the same for every set of a folder)."""
        out = {"method": self.name, "title": self.title, "reference": self.reference, "formula": self.formula,
               "norm": "linf"}
        if self.iterative:
            out.update(steps=params.steps, step_size=params.step_size,
                       step_size_rule=("as given (--step-size)" if params.step_size is not None else
                                       f"{STEP_RULE_TEXT} (per set: the set's step_size)"),
                       projection="after every step: clamp to [x - eps, x + eps] and to the clipping range",
                       result="the last iterate")
        if self.random_start:
            out.update(restarts=params.restarts, seed=params.seed,
                       random_start="z_0 = x + eps (2u - 1), u ~ U[0, 1)^d in float64, projected",
                       random_stream=f"numpy default_rng([seed, {STREAM_ATTACK}, restart]) drawn row after row over "
                                     "the attacked images in their order (advbp_cli.rng.RandomStarts)",
                       restart_selection=RESTART_RULE)
        return out


METHODS: dict[str, AttackMethod] = {}


def register_attack(method: AttackMethod) -> None:
    if method.name in METHODS:
        raise ValueError(f"attack {method.name!r} is already registered")
    METHODS[method.name] = method


def method_names() -> list[str]:
    return list(METHODS)


def get_method(name: str, option: str = "--method") -> AttackMethod:
    if name not in METHODS:
        raise UsageProblem(f"invalid value for {option}: {name!r} (expected one of {', '.join(METHODS)})")
    return METHODS[name]


# ------------------------------------------------------------------------------------------------ the options
def resolve_attacks(methods, *, steps=None, step_size=None, restarts=None, seed=None, loss="model",
                    batch_size=1000, model_mode="eval") -> list[AttackParams]:
    """The attacks one command runs, from its options, each with the options its method takes. An option that
    no requested method takes, or an iterative method without --steps, is refused in one line (exit 2)."""
    chosen = [get_method(m) for m in dict.fromkeys(methods)]
    names = ", ".join(m.name for m in chosen)
    iterative = [m for m in chosen if m.iterative]
    random = [m for m in chosen if m.random_start]
    for value, option, takers, who in ((steps, "--steps", iterative, "bim, pgd"),
                                       (step_size, "--step-size", iterative, "bim, pgd"),
                                       (restarts, "--restarts", random, "pgd"), (seed, "--seed", random, "pgd")):
        if value is not None and not takers:
            raise UsageProblem(f"{option} applies to {who}, not to --method {names}")
    if iterative and steps is None:
        raise UsageProblem(f"--method {iterative[0].name} needs --steps K, the number of iterations (e.g. --steps 40)")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise UsageProblem(f"invalid value for --steps: {steps!r} (a whole number >= 1)")
    if restarts is not None and (isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1):
        raise UsageProblem(f"invalid value for --restarts: {restarts!r} (a whole number >= 1)")
    if step_size is not None and not (isinstance(step_size, (int, float)) and math.isfinite(step_size)
                                      and step_size > 0):
        raise UsageProblem(f"invalid value for --step-size: {step_size!r} (a finite number > 0)")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise UsageProblem(f"invalid value for --seed: {seed!r} (a whole number >= 0)")
    out = []
    for m in chosen:
        p = AttackParams(m.name, loss, batch_size, model_mode)
        if m.iterative:
            p = replace(p, steps=steps, step_size=None if step_size is None else float(step_size))
        if m.random_start:
            p = replace(p, restarts=1 if restarts is None else restarts, seed=0 if seed is None else seed)
        out.append(p)
    return out


# ------------------------------------------------------------------------------------------------ FGSM
def _run_fgsm(method, params, gnet, x, y, eps_list, clip, train_cfg, progress) -> Started:
    grads = fgsm_signs(gnet, x, y, params.batch_size, train_mode_cfg=train_cfg)
    info = {"zero_gradient_samples": grads.zero_samples, "zero_gradient_fraction": grads.zero_fraction}
    return Started(info, (Adversarial(eps, perturb(x, grads.signs, eps, clip)) for eps in eps_list))


# ------------------------------------------------------------------------------------------------ BIM, PGD
def _run_linf(method, params, gnet, x, y, eps_list, clip, train_cfg, progress) -> Started:
    return Started({}, (_linf_set(method, params, gnet, x, y, eps, clip, train_cfg, progress) for eps in eps_list))


def _linf_set(method, params, gnet, x, y, eps, clip, train_cfg, progress, observe=None) -> Adversarial:
    """One eps: R restarts (1 for bim), keeping each sample's worst case (RESTART_RULE)."""
    a = params.step_size_for(eps)
    _representable(a, gnet.dtype, "--step-size" if params.step_size is not None else "--eps")
    best = wrong_best = loss_best = None
    errors = []
    restarts = params.restarts if method.random_start else 1
    for r in range(restarts):
        t0 = time.perf_counter()
        z = linf_iterates(gnet, x, y, eps, a, params, clip, r if method.random_start else None, train_cfg, observe)
        wrong, losses = _judge(gnet, z, y)
        if best is None:
            best, wrong_best, loss_best = z, wrong, losses
        else:  # worse for the network: misclassified beats correct, then the higher loss
            take = (wrong > wrong_best) | ((wrong == wrong_best) & (losses > loss_best))
            best[take], wrong_best[take], loss_best[take] = z[take], wrong[take], losses[take]
        errors.append(100.0 * float(wrong_best.mean()) if len(y) else float("nan"))
        if progress is not None:
            which = f"restart {r + 1}/{restarts}, " if method.random_start else ""
            progress(f"{method.name} eps {eps:g}: {which}{params.steps} steps of {a:.4g}: error "
                     f"{errors[-1]:.2f}% ({time.perf_counter() - t0:.1f}s)")
    per_set = {"step_size": a, "steps": params.steps}
    if method.random_start:
        per_set["error_after_restarts"] = errors
        per_set["error_after_restarts_note"] = ("percent of the set the source misclassifies keeping the worst case "
                                                "over the first 1, 2, ... restarts (never decreasing)")
    return Adversarial(eps, best, per_set)


def linf_iterates(gnet, x, y, eps, step_size, params: AttackParams, clip, restart: int | None, train_cfg=None,
                  observe=None) -> np.ndarray:
    """The last iterate of BIM (restart None: z_0 = x) or of PGD's restart `restart` (z_0 = x + its random start),
    params.batch_size samples at a time. With train_cfg (the source's RunConfig) dropout is active: iteration t of
    restart r uses the masks of epoch key ATTACK_MASK_EPOCH + r K + t, batch b step b's (r = t = 0 is FGSM's)."""
    if params.batch_size < 1:
        raise UsageProblem("--batch-size must be at least 1")
    starts = RandomStarts(params.seed, restart) if restart is not None else None
    first = ATTACK_MASK_EPOCH + (restart or 0) * params.steps
    out = np.empty_like(x)
    bs = params.batch_size
    for b, lo in enumerate(range(0, len(x), bs)):
        hi = min(lo + bs, len(x))
        xb, yb = gnet.asarray(x[lo:hi]), gnet.asarray(y[lo:hi], labels=True)
        start = None if starts is None else gnet.asarray(starts.next_rows(hi - lo, x.shape[1], eps))
        masks = None if train_cfg is None else (lambda t: DropoutMasks(train_cfg.runtime.seed, first + t))
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # judged below, in one line
            z, bad = gnet.linf_attack(xb, yb, eps, step_size, params.steps, clip, start, masks, k=b,
                                      step=train_cfg.train if train_cfg is not None else None, observe=observe)
        if bad:
            raise UsageProblem("the source network's input gradient is NaN or Inf on its iterates (weights or inputs "
                               "out of range), so it defines no attack direction")
        out[lo:hi] = z
    return out


def _judge(gnet, z, y) -> tuple[np.ndarray, np.ndarray]:
    """(misclassified, loss J_i) per sample, from one forward pass of the gradient's network in evaluation mode."""
    ev = evaluate_arrays(gnet, z, y)
    if ev.nonfinite:
        raise UsageProblem("the source network's outputs are NaN or Inf on the attack's iterates, so restarts cannot "
                           "be compared (weights or inputs out of range)")
    return ev.predictions != y, ev.losses.astype(np.float64)


def _representable(value: float, dtype: str, option: str) -> None:
    with np.errstate(over="ignore"):
        ok = bool(np.isfinite(np.asarray(value, dtype=dtype)))
    if not ok:
        raise UsageProblem(f"invalid value for {option}: the step size {value:g} overflows {dtype} (whose largest "
                           f"value is {np.finfo(dtype).max:.3g}); the inputs are of order 1, use a far smaller "
                           f"{option}")


register_attack(AttackMethod(
    "fgsm", "FGSM", "Goodfellow et al. 2014 (the fast gradient sign method); Nokland 2015, section 3",
    "z = clip(x + eps * sign(dJ/dx))", iterative=False, random_start=False, run=_run_fgsm))
register_attack(AttackMethod(
    "bim", "BIM", "Kurakin et al. 2016 (the basic iterative method)",
    "z_0 = x; z_(t+1) = clip(min(max(z_t + a * sign(dJ/dz_t), x - eps), x + eps)); z = z_K", iterative=True,
    random_start=False, run=_run_linf))
register_attack(AttackMethod(
    "pgd", "PGD", "Madry et al. 2018 (projected gradient descent with random restarts)",
    "bim from z_0 = clip(x + eps * (2u - 1)), u ~ U[0, 1)^d; the worst of R restarts per sample", iterative=True,
    random_start=True, run=_run_linf))


def run_attack(params: AttackParams, gnet, x, y, eps_list, clip, train_cfg=None, progress=None) -> Started:
    """Starts `params`' attack on (x, y) with the network gnet (whose loss gives the gradient): its sets, one per
    eps, are computed as they are iterated."""
    method = get_method(params.method)
    return method.run(method, params, gnet, x, y, eps_list, clip, train_cfg, progress)
