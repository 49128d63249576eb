"""`advbp eval` as a library call: error, loss and hidden-unit sparsity of trained networks on a split, their error on
stored attack sets (transfer, or their own set) and under white-box attacks (any method of the attack registry,
each network attacked with its own gradient), as rows of a robustness curve."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .attack import clip_rule, finite_inputs, gradient_network, overlap_with_training, zero_gradient_warning
from .attack_methods import AttackParams, get_method, run_attack
from .attack_sets import check_compatible, load_set, sets_in_dir
from .data.download import sha256_of
from .errors import UsageProblem
from .evaluate import check_finite, evaluate_arrays
from .files import write_json_atomic, write_text_atomic
from .model_data import load_models
from .outdir import check_output_file, resolve
from .provenance import provenance

UNITS = {"error": "percent of n", "loss": "mean per sample", "hidden_zero_percent": "percent of the hidden units' "
         "activations that are exactly 0, per hidden layer, over the n images"}
CURVE_FORMAT = "advbp-robustness-curve/1"
# the columns of a --curve-out CSV; method and its parameters come last, so v1's column positions still hold
CSV_COLUMNS = ["model", "attack", "eps", "clip", "split", "n", "error", "loss", "set", "source", "method", "steps",
               "step_size", "restarts", "gradient_loss"]


@dataclass
class EvalRequest:
    sources: list[str]
    labels: list[str]  # short names of the sources, for tables and the curve's model column
    split: str | None = None  # default: each run's own evaluation split
    limit: int | None = None
    set_paths: list[Path] = field(default_factory=list)
    eps_list: list[float] = field(default_factory=list)  # white-box eps values
    attacks: list[AttackParams] = field(default_factory=list)  # white-box attacks, each at every eps
    clip: bool | None = None
    clip_option: str = "--clip"  # as the user spelt it, for messages
    eps_option: str = "--eps"
    backend: str | None = None
    device: str | None = None
    dtype: str | None = None  # None: each checkpoint's
    threads: int | None = None
    data_dir: str | None = None
    download: bool = True
    max_error: float | None = None

    @property
    def attacking(self) -> bool:
        return bool(self.set_paths or self.eps_list)


@dataclass
class EvalOutcome:
    results: list[dict]  # one per model: what `advbp eval --json` prints for it
    curve: list[dict]  # every model's rows: clean, stored sets, white-box attacks
    failed: list[tuple]  # (source, split, error) above --max-error


def evaluate_models(req: EvalRequest, log: Callable = print, on_model: Callable | None = None) -> EvalOutcome:
    """Every model, its clean error and its attack rows; `on_model(result)` sees each model's result as it is done."""
    def check(models) -> None:  # --clip for a ZCA model is refused before any data is read
        if req.eps_list and req.clip:
            for m in models:
                if m.cfg.data.preprocess == "zca":
                    clip_rule({"kind": "zca"}, True, req.clip_option)

    models = load_models(req.sources, backend=req.backend, device=req.device, dtype=req.dtype, data_dir=req.data_dir,
                         download=req.download, log=log, check=check)
    # Every attack set against every model before any work: a mismatch fails at once, with nothing written.
    sets: dict = {}
    for m in models:
        for path in req.set_paths:
            key = (str(path), m.net.dtype)
            if key not in sets:
                sets[key] = load_set(path, dtype=m.net.dtype)
            check_compatible(sets[key], m.cfg, m.source, m.prep.describe())
    out = EvalOutcome([], [], [])
    for label, m in zip(req.labels, models):
        result = _evaluate_one(req, label, m, sets, log)
        if req.max_error is not None and not result["passed"]:
            out.failed.append((m.source, result["split"], result["error"]))
        out.curve.extend(result.get("attacks", []))
        out.results.append(result)
        if on_model is not None:
            on_model(result)
    return out


def _evaluate_one(req: EvalRequest, label: str, m, sets: dict, log) -> dict:
    name = req.split or m.cfg.data.eval_split
    data = m.split(name, req.limit)  # in a validation-mode run, `train` means the 50k it was trained on
    ev = check_finite(evaluate_arrays(m.net, data.x, data.y, sparsity=True), f"{m.source} on {name}")
    result = {
        "source": m.source, "checkpoint": str(m.checkpoint), "epoch": int(m.meta.get("epoch", 0)), "split": name,
        "n": ev.n, "error": ev.error, "loss": ev.loss,
        "hidden_zero_percent": [100 * z for z in ev.hidden_zero_fraction], "units": UNITS,
        "backend": m.net.name, "device": m.net.device, "dtype": m.net.dtype, "threads": req.threads,
    }
    if req.max_error is not None:
        result["max_error"] = req.max_error
        result["passed"] = ev.error <= req.max_error
    if req.attacking:
        base = {"model": label, "source": m.source, "checkpoint": str(m.checkpoint), "dtype": m.net.dtype}
        rows = [{**base, "attack": "none", "method": None, "eps": 0.0, "clip": None, "split": data.name, "set": None,
                 "n": ev.n, "error": ev.error, "loss": ev.loss}]
        rows += stored_set_rows(base, m, [sets[(str(p), m.net.dtype)] for p in req.set_paths], log)
        rows += whitebox_rows(base, m, data, req, log)
        result["attacks"] = rows
    return result


def stored_set_rows(base: dict, m, attack_sets: list, log) -> list[dict]:
    """The model's error on each stored set: `whitebox-set` when the model is the set's source, else `transfer`."""
    rows, seen = [], []  # seen: sets whose clean images the model was trained on, one warning per model
    own_sha = sha256_of(m.checkpoint) if attack_sets else None
    for aset in attack_sets:
        mf = aset.manifest
        overlap = overlap_with_training(m.cfg, mf, aset.indices)
        if overlap:
            seen.append((aset.path, overlap, len(aset.y)))
        set_source_sha = (mf.get("source") or {}).get("checkpoint_sha256")
        attack = mf.get("attack") or {}
        ev = check_finite(evaluate_arrays(m.net, aset.x, aset.y), f"{m.source} on {aset.path}")
        rows.append({**base, "attack": "whitebox-set" if set_source_sha == own_sha else "transfer",
                     "method": attack.get("method", "fgsm"), "steps": attack.get("steps"),
                     "gradient_loss": attack.get("gradient_loss"),
                     "step_size": mf.get("step_size"), "restarts": attack.get("restarts"),
                     "eps": mf.get("eps"), "clip": mf.get("clip"), "split": (mf.get("dataset") or {}).get("split"),
                     "set": str(aset.path), "set_source_checkpoint_sha256": set_source_sha,
                     "quantised": bool(mf.get("quantised")), "n": ev.n, "error": ev.error, "loss": ev.loss,
                     "manifest_source_error": mf.get("source_error")})
    if seen:
        path, overlap, n = seen[0]
        more = f" (and likewise {len(seen) - 1} more set(s))" if len(seen) > 1 else ""
        log(f"warning: {m.source} was trained on {overlap} of the {n} clean images behind {path}{more}; "
            "its errors on such sets are not held-out numbers")
    return rows


def whitebox_rows(base: dict, m, data, req: EvalRequest, log) -> list[dict]:
    """Each white-box attack of the request against the model itself, at every eps, on `data`."""
    if not req.eps_list:
        return []
    rule = clip_rule(data.preprocess, req.clip, req.clip_option)
    if m.cfg.data.preprocess != "scale01":
        log(f"advbp: white-box attacks on {m.source} ({m.cfg.data.preprocess} inputs): {rule.rule}")
    rows = []
    for params in req.attacks:
        method = get_method(params.method)
        gnet, gradient_loss = gradient_network(m.net, m.cfg, params.loss)
        started = run_attack(params, gnet, data.x, data.y, req.eps_list, rule.range,
                             progress=(lambda t: log(f"{m.source}: {t}")) if method.iterative else None)
        zero = started.info.get("zero_gradient_samples")
        if zero:
            log(zero_gradient_warning(zero, len(data.y), f"the objective of {m.source}"))
        for adv in started.sets:
            z = finite_inputs(adv.z, adv.eps, req.eps_option)
            ev = check_finite(evaluate_arrays(m.net, z, data.y), f"white-box {method.title} at eps {adv.eps:g}")
            rows.append({**base, "attack": "whitebox", "method": method.name, "steps": params.steps,
                         "step_size": adv.per_set.get("step_size"), "restarts": params.restarts,
                         "seed": params.seed, "gradient_loss": gradient_loss, "eps": adv.eps,
                         "clip": list(rule.range) if rule.range else None,
                         "clip_rule": rule.rule, "split": data.name, "set": None, "n": ev.n, "error": ev.error,
                         "loss": ev.loss, **({"zero_gradient_samples": zero} if zero is not None else {}),
                         **({"error_after_restarts": adv.per_set["error_after_restarts"]}
                            if "error_after_restarts" in adv.per_set else {})})
    return rows


# ------------------------------------------------------------------------------------------------ the curve file
def curve_format(path: str) -> str:
    """csv or json, from --curve-out's suffix; a folder or a file in the way, a name too long: refused now."""
    check_output_file(Path(path), "--curve-out")
    suffix = Path(path).suffix.lower()
    if suffix not in (".csv", ".json"):
        raise UsageProblem(f"--curve-out {path}: name a .csv or a .json file")
    return suffix[1:]


def write_curve(path: Path, fmt: str, curve: list[dict]) -> None:
    if fmt == "json":
        write_json_atomic(path, {"format": CURVE_FORMAT, "provenance": provenance(("torch",)), "rows": curve})
        return
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in curve:
        clip = "" if not r["clip"] else f"{r['clip'][0]:g}..{r['clip'][1]:g}"
        opt = ["" if r.get(k) is None else f"{r[k]:g}" if isinstance(r[k], float) else r[k]
               for k in ("method", "steps", "step_size", "restarts", "gradient_loss")]
        w.writerow([r["model"], r["attack"], f"{r['eps']:g}", clip, r["split"], r["n"], f"{r['error']:.4f}",
                    f"{r['loss']:.6f}", r["set"] or "", r["source"], *opt])
    write_text_atomic(path, buf.getvalue())


def expand_sets(values) -> list[Path]:
    """--attack-set values: a set (its .npz, .json or idx images file) or a folder (every set its manifest lists)."""
    out: list[Path] = []
    for v in values:
        if not str(v).strip():
            raise UsageProblem("--attack-set needs a file or folder name (got an empty string)")
        p = Path(v)
        if p.is_dir():
            found = sets_in_dir(p)
            if not found:
                raise UsageProblem(f"--attack-set {p}: the folder's manifest lists no sets")
            out.extend(found)
        elif not p.exists() and not resolve(p.parent, p.name).exists():  # (a set still being moved into place)
            raise UsageProblem(f"--attack-set {p} does not exist")
        else:
            out.append(p)
    return out
