"""What every attack shares (eps lists, clipping rules, the data's identity, the gradient's network, the error of a
network on a set) and FGSM's arithmetic (Goodfellow et al. 2014; Nøkland 2015 section 3). The attacks themselves,
FGSM, BIM and PGD, are entries of the registry in attack_methods.py.

z = x + eps * sign(dJ/dx), computed with the source network in evaluation mode (dropout off) unless
`--model-mode train` asks for dropout as in training (masks from the run's seed, see ATTACK_MASK_EPOCH); the
manifest records the mode. For a network without dropout both modes compute the same. The input gradients of a
whole batch are computed at once: `Backend.sample_input_gradients` returns each sample's own gradient dJ_i/dx_i
(no batch mean, so no 1/n can flush a tiny gradient to zero), hence the signs do not depend on the batch size,
which only bounds memory. The gradient is computed once and reused for every eps.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from .data.splits import training_count
from .errors import UsageProblem
from .evaluate import evaluate_arrays
from .networks import build_backend
from .rng import DropoutMasks

MAX_EPS_VALUES = 1000
LOSSES = ("model", "sigmoid_bce", "softmax_ce")


# ------------------------------------------------------------------------------------------------ eps parsing
def _float(text: str, option: str, whole: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise UsageProblem(f"invalid value for {option}: {whole!r} ({text.strip()!r} is not a number)") from None
    if not math.isfinite(v):
        raise UsageProblem(f"invalid value for {option}: {whole!r} (must be finite)")
    return v


def _clean(v: float) -> float:
    """0.15000000000000002 -> 0.15: range steps are rounded to 12 decimals so names and manifests read well."""
    return float(round(v, 12)) + 0.0


def parse_eps(values, option: str = "--eps") -> list[float]:
    """Values of a repeatable --eps: each is a number, a comma list (0.1,0.25) or an inclusive range
    START:STOP:STEP (0.05:0.5:0.05 is 0.05, 0.1, ..., 0.5). Duplicates are dropped; the order is kept."""
    out: list[float] = []
    for whole in values:
        for token in str(whole).split(","):
            token = token.strip()
            if not token:
                continue
            if ":" in token:
                parts = token.split(":")
                if len(parts) != 3:
                    raise UsageProblem(f"invalid value for {option}: {whole!r} (a range is START:STOP:STEP, e.g. 0.05:0.5:0.05)")
                start, stop, step = (_float(p, option, whole) for p in parts)
                if step <= 0:
                    raise UsageProblem(f"invalid value for {option}: {whole!r} (the STEP of a range must be positive)")
                if stop < start:
                    raise UsageProblem(f"invalid value for {option}: {whole!r} (STOP is smaller than START)")
                count = int(math.floor((stop - start) / step + 1e-9)) + 1
                if count > MAX_EPS_VALUES:
                    raise UsageProblem(f"invalid value for {option}: {whole!r} gives {count} values (at most {MAX_EPS_VALUES})")
                out.extend(_clean(start + k * step) for k in range(count))
            else:
                out.append(_clean(_float(token, option, whole)))
    if not out:
        raise UsageProblem(f"{option} needs at least one value (e.g. {option} 0.25, {option} 0.1,0.25 or {option} 0.05:0.5:0.05)")
    bad = [v for v in out if v < 0]
    if bad:
        raise UsageProblem(f"invalid value for {option}: {bad[0]} (eps must be >= 0)")
    if len(set(out)) > MAX_EPS_VALUES:
        raise UsageProblem(f"{option}: {len(set(out))} values (at most {MAX_EPS_VALUES})")
    return list(dict.fromkeys(out))


# ------------------------------------------------------------------------------------------------ data identity
def split_checksum(raw: dict, split) -> str:
    """sha256 of the split's original uint8 pixels, then its uint8 labels, in order: independent of dtype."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(raw[f"x_{split.source}"][split.indices], dtype=np.uint8).tobytes())
    h.update(np.ascontiguousarray(raw[f"y_{split.source}"][split.indices], dtype=np.uint8).tobytes())
    return h.hexdigest()


def training_indices(cfg) -> tuple[str, int]:
    """(file, n): a run was trained on the first n images of the `file` ("train") data (the data set registry's
    sizes and validation hold-out)."""
    return "train", training_count(cfg.data)


def overlap_with_training(cfg, manifest: dict, indices: np.ndarray) -> int:
    """How many of a set's samples the model was trained on (clean), e.g. a validation-split set against a run
    trained on all 60k training images: its transfer error is then not a held-out number."""
    source = (manifest.get("dataset") or {}).get("source_file")
    file, n = training_indices(cfg)
    if source != file:
        return 0
    return int((indices < n).sum())


# ------------------------------------------------------------------------------------------------ clipping
@dataclass
class ClipRule:
    """Where FGSM inputs are clipped for a run's preprocessing: `range` (lo, hi) in the network's input units, or
    None, and a sentence saying why (recorded in manifests and printed on stderr when it is not [0, 1])."""

    range: tuple[float, float] | None
    rule: str


def pixel_box(preprocess: dict | None) -> tuple[float, float] | None:
    """The image of the pixel box [0, 1] (x/255) under the preprocessing, where it is a box: scale01 -> [0, 1];
    simple ((255 u - m) / s with scalar m, s in 0-255 units) -> [-m/s, (255 - m)/s]; zca -> None (the image of
    [0, 1]^d under whitening is a rotated, sheared box, so no per-coordinate range is the image of the pixel box)."""
    kind = (preprocess or {}).get("kind", "scale01")
    if kind == "scale01":
        return 0.0, 1.0
    if kind == "simple":
        m, s = float(preprocess["mean"]), float(preprocess["std"])
        return -m / s, (255.0 - m) / s
    return None


def clip_rule(preprocess: dict | None, clip: bool | None, option: str = "--clip") -> ClipRule:
    """The clipping of attack inputs (FGSM, and every BIM/PGD iterate) for a run's preprocessing. `clip` None (the default) clips to the image of the
    pixel box [0, 1] where that is a box (scale01, simple) and does not clip ZCA inputs; True asks for that box and
    is refused for ZCA; False never clips."""
    kind = (preprocess or {}).get("kind", "scale01")
    box = pixel_box(preprocess)
    if clip is False:
        return ClipRule(None, f"not clipped ({option.replace('--', '--no-', 1)})")
    if box is None:
        if clip:
            raise UsageProblem(f"{option}: {kind} inputs cannot be clipped to the pixel range (the image of [0, 1] "
                               f"under {kind} whitening is not a box); leave {option} out, or give "
                               f"{option.replace('--', '--no-', 1)}")
        return ClipRule(None, f"not clipped: {kind} inputs have no per-coordinate image of the pixel range [0, 1] "
                              f"(whitening rotates the pixel box), so attack inputs of {kind} runs are left "
                              "unclipped: FGSM's x + eps sign(e) as is, BIM and PGD projected onto the eps-ball "
                              "around x only")
    if kind == "scale01":
        return ClipRule(box, "clipped to the pixel range [0, 1]")
    return ClipRule(box, f"clipped to [{box[0]:.6g}, {box[1]:.6g}], the image of the pixel range [0, 1] under "
                         f"{kind} preprocessing ((255 u - {preprocess['mean']:.6g}) / {preprocess['std']:.6g})")


def preprocess_identity(preprocess: dict | None) -> dict:
    """What makes two preprocessings the same transform: the kind and its fitted parameters (simple: mean and
    std; zca: the cache key over the training pixels, eps and the computation's version)."""
    p = preprocess or {"kind": "scale01"}
    kind = p.get("kind", "scale01")
    if kind == "simple":
        return {"kind": kind, "mean": p.get("mean"), "std": p.get("std")}
    if kind == "zca":
        return {"kind": kind, "key": p.get("key"), "epsilon": p.get("epsilon")}
    return {"kind": kind}


# ------------------------------------------------------------------------------------------------ the gradient
def gradient_network(net, cfg, loss: str):
    """The network whose input gradient defines the attack. `model` is the network's own training objective
    (the paper's J); another loss gives a copy of the same weights with that output objective (the argmax,
    hence every error, is unchanged)."""
    if loss not in LOSSES:
        raise UsageProblem(f"invalid value for --loss: {loss!r} (expected one of {', '.join(LOSSES)})")
    if loss in ("model", cfg.model.output):
        return net, cfg.model.output
    other = cfg.model_copy(deep=True)
    other.model.output = loss
    g = build_backend(other, net.name, net.device, net.dtype)
    g.set_params(net.get_params())
    return g, loss


@dataclass
class Gradients:
    signs: np.ndarray  # int8 sign(dJ/dx), shape of x
    zero_samples: int  # samples whose whole input gradient is exactly zero (FGSM leaves them unchanged)
    zero_fraction: float  # fraction of exactly-zero gradient components
    batch_size: int


# Dropout masks of an attack in train mode come from the training seed's dropout stream under this epoch key,
# which no training run reaches, and batch b of the attack uses step b's masks.
ATTACK_MASK_EPOCH = 1_000_000


def fgsm_signs(net, x: np.ndarray, y: np.ndarray, batch_size: int, train_mode_cfg=None) -> Gradients:
    """sign(dJ_i/dx_i) for every sample i, each from its own gradient (no weight gradients), batch_size at a time.
    With `train_mode_cfg` (the source's RunConfig) dropout is active, as while training (--model-mode train)."""
    masks = None
    if train_mode_cfg is not None:
        masks = DropoutMasks(train_mode_cfg.runtime.seed, ATTACK_MASK_EPOCH)
    if batch_size < 1:
        raise UsageProblem("--batch-size must be at least 1")
    signs = np.empty(x.shape, dtype=np.int8)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # a network out of range fails in error_of
        _signs_into(signs, net, x, y, batch_size, masks, train_mode_cfg)
    zero_rows = ~signs.any(axis=1)
    zero_frac = float((signs == 0).mean()) if signs.size else 0.0
    return Gradients(signs, int(zero_rows.sum()), zero_frac, batch_size)


def _signs_into(signs, net, x, y, batch_size, masks, train_mode_cfg) -> None:
    for start in range(0, len(x), batch_size):
        stop = min(start + batch_size, len(x))
        xb, yb = net.asarray(x[start:stop]), net.asarray(y[start:stop], labels=True)
        if masks is None:
            e = net.sample_input_gradients(xb, yb)
        else:
            e = net.sample_input_gradients(xb, yb, masks=masks, k=start // batch_size, step=train_mode_cfg.train)
        if not np.isfinite(e).all():  # its sign would be no direction at all
            raise UsageProblem("the source network's input gradient is NaN or Inf (weights or inputs out of range), "
                               "so it defines no FGSM direction")
        np.sign(e, out=signs[start:stop], casting="unsafe")  # -1, 0, 1 straight into int8


def perturb(x: np.ndarray, signs: np.ndarray, eps: float, clip: tuple[float, float] | None) -> np.ndarray:
    """z = x + eps * sign(e), clipped to `clip` when given: bit for bit what `backends/step.fgsm_perturb` computes
    (Algorithm 1 step 3) with the numpy primitives, in place in one new array."""
    z = signs.astype(x.dtype)  # the signs are already -1, 0 or 1
    with np.errstate(over="ignore", invalid="ignore"):  # an eps beyond the dtype is refused by finite_inputs
        z *= eps  # eps * sign in x's dtype, as in the reference
        z += x
    if clip is not None:
        np.clip(z, clip[0], clip[1], out=z)
    return z


def finite_inputs(z: np.ndarray, eps: float, option: str) -> np.ndarray:
    """FGSM inputs are an answer only if finite: an eps beyond the dtype's range makes x + eps * sign(e) Inf (or
    NaN where sign(e) = 0), which no set may hold and no error rate may be computed from."""
    with np.errstate(over="ignore"):
        representable = bool(np.isfinite(np.asarray(eps, dtype=z.dtype)))
    if not representable or not np.isfinite(z).all():  # (clipping would hide an eps that is Inf in the arithmetic)
        limit = np.finfo(z.dtype).max
        raise UsageProblem(f"invalid value for {option}: {eps:g} makes x + eps * sign(dJ/dx) overflow {z.dtype} (whose "
                           f"largest value is {limit:.3g}) to Inf or NaN; the inputs are of order 1, use a far "
                           f"smaller {option}")
    return z


def zero_gradient_warning(zero: int, n: int, what: str) -> str:
    return (f"warning: {zero} of {n} samples have an exactly zero input gradient under {what}; "
            "FGSM leaves them unchanged at every eps")


# ------------------------------------------------------------------------------------------------ evaluation
def error_of(net, x: np.ndarray, y: np.ndarray) -> float:
    """Percent misclassified: the number `evaluate_arrays` reports (one forward pass per chunk). Outputs that are
    not finite give no error rate: one line instead."""
    ev = evaluate_arrays(net, x, y)
    if ev.nonfinite:
        raise UsageProblem("the source network's outputs are NaN or Inf on these inputs, so the set has no error "
                           "rate (weights or inputs out of range)")
    return ev.error
