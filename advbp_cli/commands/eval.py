"""`advbp eval`: error, loss and hidden-unit sparsity of trained networks on a split; with --attack-set or
--fgsm-eps also their error on FGSM attack sets (transfer / white-box), as a robustness curve."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..data.paths import explained, resolve_data_dir
from ..data.splits import load_raw, preprocessor_for, split_of
from ..errors import UsageProblem, os_problem
from ..evaluate import check_finite, evaluate_arrays
from ..networks import load_network
from ..cliparams import FINITE_PERCENT
from .common import apply_command_threads, backend_options, data_dir_option, emit_json, explain_stray_values, json_option, no_download_option, threads_option
from .tables import is_plain, plain_option, print_table

UNITS = {"error": "percent of n", "loss": "mean per sample", "hidden_zero_percent": "percent of the hidden units' "
         "activations that are exactly 0, per hidden layer, over the n images"}


@click.command("eval")
@click.argument("sources", metavar="SOURCE...", nargs=-1, required=True, type=click.Path())
@click.option("--split", type=click.Choice(["test", "validation", "train"]), default=None,
              help="Default: the split the run evaluated on.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Only the first N images of the split (stored attack sets are used whole).")
@click.option("--attack-set", "attack_sets", multiple=True, type=click.Path(),
              help="Error on a stored attack set (an .npz, or an idx set's .json), or on every set of a folder "
                   "written by `advbp attack`. Repeatable.")
@click.option("--fgsm-eps", "fgsm_eps", multiple=True,
              help="White-box FGSM error against each model itself, on --split; a value, list or START:STOP:STEP.")
@click.option("--fgsm-clip/--fgsm-no-clip", default=None,
              help="Clip white-box FGSM inputs to the pixel range [0, 1] as each model's preprocessing maps it "
                   "(as `advbp attack --clip`). Default: clip, except ZCA models, which are left unclipped.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Samples per input-gradient computation for --fgsm-eps: memory only (each sample's gradient is "
                   "its own, so the signs do not depend on it, as in `advbp attack`).")
@click.option("--curve-out", type=click.Path(dir_okay=False), default=None,
              help="Save the robustness curve (error per model, attack and eps) as .csv or .json.")
@backend_options
@threads_option
@data_dir_option(reads_runs=True)
@no_download_option
@click.option("--max-error", type=FINITE_PERCENT, default=None,
              help="Exit 1 when the clean error (%) is above this: a gate for CI.")
@plain_option
@json_option
def eval_cmd(sources, split, limit, attack_sets, fgsm_eps, fgsm_clip, batch_size, curve_out, backend, device,
             threads, data_dir, no_download, max_error, plain, as_json):
    """Evaluate run directories or checkpoint files (any backend can load any checkpoint).

    With several SOURCEs and --attack-set FOLDER (or --fgsm-eps 0.05:0.5:0.05) it prints the robustness curve,
    error against eps per model; --curve-out saves it. With --json: one SOURCE prints one object (as always),
    several print {"models": [...], "curve": [...]}. Units: every error and zero fraction is in percent (`error`,
    `hidden_zero_percent`; "units" in the JSON says so), losses are means per sample.
    """
    from ..attack import parse_eps

    threads = apply_command_threads(threads)
    explain_stray_values(sources, "--fgsm-eps" if fgsm_eps else None, "SOURCE")
    for src in sources:  # `--attack-set a.npz b.npz` makes b.npz a SOURCE
        if Path(src).suffix.lower() in (".npz", ".json", ".idx") and Path(src).is_file():
            raise UsageProblem(f"{src} was read as a SOURCE (a run directory or checkpoint) but looks like an attack "
                               "set: --attack-set takes one value each time (repeat it, or give the sets' folder)")
    eps_list = parse_eps(fgsm_eps, "--fgsm-eps") if fgsm_eps else []
    curve_fmt = _curve_format(curve_out) if curve_out else None
    set_paths = _expand_sets(attack_sets)
    attacking = bool(set_paths or eps_list)
    if curve_out and not attacking:
        raise UsageProblem("--curve-out needs --attack-set or --fgsm-eps (a curve of error against eps)")
    # Load every model first, so a bad SOURCE fails before any work.
    models = [(src, *load_network(src, backend=backend, device=device)) for src in sources]
    if eps_list and fgsm_clip:  # --fgsm-clip for a ZCA model is refused before any data is read
        from ..attack import clip_rule

        for src, _, cfg, _, _ in models:
            if cfg.data.preprocess == "zca":
                clip_rule({"kind": "zca"}, True, "--fgsm-clip")
    labels = _labels(sources)
    data_path, origin = resolve_data_dir(data_dir, runs=sources)
    log = lambda m: click.echo(m, err=True)  # noqa: E731
    with explained(data_path, origin):
        raws = {ds: load_raw(ds, data_path, download=not no_download, log=log)
                for ds in dict.fromkeys(cfg.data.dataset for _, _, cfg, _, _ in models)}

    for src, net, cfg, _, _ in models:
        raw = raws[cfg.data.dataset]
        if cfg.model.input_size != raw["x_train"].shape[1]:
            raise UsageProblem(f"{src} takes inputs of size {cfg.model.input_size}, but {cfg.data.dataset} images "
                               f"have {raw['x_train'].shape[1]} pixels")
    # each model's own preprocessing, fitted on its training split (ZCA: read back from the cache); one fit per
    # distinct data config
    prep_cache: dict = {}
    preps = []
    for _, _, cfg, _, _ in models:
        key = (cfg.data.dataset, cfg.data.preprocess, cfg.data.eval_split, cfg.data.zca_epsilon)
        if key not in prep_cache:
            prep_cache[key] = preprocessor_for(cfg.data, raws[cfg.data.dataset], log)
        preps.append(prep_cache[key])

    # Every attack set against every model before any work: a mismatch fails at once, with nothing written.
    set_cache: dict = {}
    if set_paths:
        from ..attack_sets import check_compatible, load_set

        for (src, net, cfg, _, _), prep in zip(models, preps):
            for path in set_paths:
                key = (str(path), net.dtype)
                if key not in set_cache:
                    set_cache[key] = load_set(path, dtype=net.dtype)
                check_compatible(set_cache[key], cfg, str(src), prep.describe())

    results, curve, failed = [], [], []
    for label, (src, net, cfg, ckpt, meta), prep in zip(labels, models, preps):
        name = split or cfg.data.eval_split
        # In a validation-mode run, `train` means the 50k the network was trained on.
        # preprocessed as the run was: refitted on its training split (ZCA: read back from the cache)
        data = split_of(raws[cfg.data.dataset], name, cfg.data.eval_split, net.dtype, limit, prep)
        ev = check_finite(evaluate_arrays(net, data.x, data.y, sparsity=True), f"{src} on {name}")  # one forward pass
        result = {
            "source": str(src),
            "checkpoint": str(ckpt),
            "epoch": int(meta.get("epoch", 0)),
            "split": name,
            "n": ev.n,
            "error": ev.error,
            "loss": ev.loss,
            "hidden_zero_percent": [100 * z for z in ev.hidden_zero_fraction],
            "units": UNITS,
            "backend": net.name,
            "device": net.device,
            "threads": threads,
        }
        if max_error is not None:
            result["max_error"] = max_error
            result["passed"] = ev.error <= max_error
            if not result["passed"]:
                failed.append((src, name, ev.error))
        if attacking:
            rows = _attack_rows(label, src, net, cfg, ckpt, data, ev, set_paths, set_cache, eps_list, fgsm_clip,
                                batch_size)
            result["attacks"] = rows
            curve.extend(rows)
        results.append(result)
        if not as_json:
            _print_model(result)

    if curve_out:
        try:
            _write_curve(Path(curve_out), curve_fmt, curve)
        except OSError as exc:
            raise os_problem(exc, f"write --curve-out {curve_out}") from None
    if as_json:
        emit_json(results[0] if len(results) == 1 else {"models": results, **({"curve": curve} if attacking else {})})
    elif attacking and (len(results) > 1 or curve_out):
        _print_curve(curve, labels, is_plain(plain))
    if curve_out and not as_json:
        click.echo(f"curve saved to {curve_out}")
    for src, name, err in failed:
        click.echo(f"FAIL: {src}: {name} error {err:.2f}% is above --max-error {max_error}%", err=True)
    if failed:
        sys.exit(1)


def _labels(sources) -> list[str]:
    """Short names for tables: the run folder's (or checkpoint's) name, the full path where names clash."""
    short = [Path(s).name or str(s) for s in sources]
    return [s if short.count(s) == 1 else str(src) for s, src in zip(short, sources)]


def _curve_format(path: str) -> str:
    from ..outdir import check_output_file

    check_output_file(Path(path), "--curve-out")  # a folder or a file in the way, a name too long: refused now
    suffix = Path(path).suffix.lower()
    if suffix not in (".csv", ".json"):
        raise UsageProblem(f"--curve-out {path}: name a .csv or a .json file")
    return suffix[1:]


def _expand_sets(values) -> list[Path]:
    from ..attack_sets import sets_in_dir
    from ..outdir import resolve

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


def _attack_rows(label, src, net, cfg, ckpt, data, clean, set_paths, set_cache, eps_list, fgsm_clip, batch_size):
    from ..attack import overlap_with_training, whitebox_errors, zero_gradient_warning
    from ..data.download import sha256_of

    base = {"model": label, "source": str(src), "checkpoint": str(ckpt)}
    rows = [{**base, "attack": "none", "eps": 0.0, "clip": None, "split": data.name, "set": None,
             "n": clean.n, "error": clean.error, "loss": clean.loss}]
    own_sha = None
    seen = []  # sets whose clean images the model was trained on: one warning per model
    for path in set_paths:
        aset = set_cache[(str(path), net.dtype)]
        m = aset.manifest
        overlap = overlap_with_training(cfg, m, aset.indices)
        if overlap:
            seen.append((path, overlap, len(aset.y)))
        own_sha = own_sha or sha256_of(ckpt)
        set_source_sha = (m.get("source") or {}).get("checkpoint_sha256")
        ev = check_finite(evaluate_arrays(net, aset.x, aset.y), f"{src} on {path}")
        rows.append({**base, "attack": "whitebox-set" if set_source_sha == own_sha else "transfer",
                     "eps": m.get("eps"), "clip": m.get("clip"), "split": (m.get("dataset") or {}).get("split"),
                     "set": str(path), "set_source_checkpoint_sha256": set_source_sha,
                     "quantised": bool(m.get("quantised")), "n": ev.n, "error": ev.error, "loss": ev.loss,
                     "manifest_source_error": m.get("source_error")})
    if seen:
        path, overlap, n = seen[0]
        more = f" (and likewise {len(seen) - 1} more set(s))" if len(seen) > 1 else ""
        click.echo(f"warning: {src} was trained on {overlap} of the {n} clean images behind {path}{more}; "
                   "its errors on such sets are not held-out numbers", err=True)
    if eps_list:
        from ..attack import clip_rule

        rule = clip_rule(data.preprocess, fgsm_clip, "--fgsm-clip")
        clip = rule.range
        if cfg.data.preprocess != "scale01":
            click.echo(f"advbp: white-box FGSM on {src} ({cfg.data.preprocess} inputs): {rule.rule}", err=True)
        wb, grads = whitebox_errors(net, cfg, data.x, data.y, eps_list, clip, batch_size)
        if grads.zero_samples:
            click.echo(zero_gradient_warning(grads.zero_samples, len(data.y), f"the objective of {src}"), err=True)
        for r in wb:
            rows.append({**base, "attack": "whitebox", "eps": r["eps"], "clip": list(clip) if clip else None,
                         "clip_rule": rule.rule,
                         "split": data.name, "set": None, "n": r["n"], "error": r["error"], "loss": r["loss"],
                         "zero_gradient_samples": grads.zero_samples})
    return rows


def _print_model(result: dict) -> None:
    ev_n, err = result["n"], result["error"]
    sparsity = ", ".join(f"{z:.1f}%" for z in result["hidden_zero_percent"])
    click.echo(f"{result['source']}: {result['split']} error {err:.2f}% ({int(round(err * ev_n / 100))}/{ev_n}), "
               f"loss {result['loss']:.4f}, hidden zeros per layer [{sparsity}] [{result['backend']}]")
    for r in result.get("attacks", [])[1:]:
        clip = "clipped" if r["clip"] else "unclipped"
        what = {"transfer": "transfer", "whitebox-set": "own set", "whitebox": "white-box"}[r["attack"]]
        where = f" {r['set']}" if r["set"] else f" on {r['split']}"
        extra = ""
        if r.get("manifest_source_error") is not None and r["attack"] == "whitebox-set":
            extra = f" (manifest: {r['manifest_source_error']:.2f}%)"
        click.echo(f"  {what:9s} eps {r['eps']:<5g} {clip:9s} error {r['error']:6.2f}% "
                   f"({int(round(r['error'] * r['n'] / 100))}/{r['n']}){extra}{where}")


def _curve_key(r: dict):
    clip = "clip" if r["clip"] else "noclip"
    kind = "transfer" if r["attack"] in ("transfer", "whitebox-set") else r["attack"]
    return kind, clip


def _print_curve(curve: list[dict], labels: list[str], plain: bool) -> None:
    """One table per attack kind (stored sets / white-box) and clipping: rows eps, columns models."""
    clean = {r["model"]: r["error"] for r in curve if r["attack"] == "none"}
    groups: dict = {}
    for r in curve:
        if r["attack"] != "none":
            groups.setdefault(_curve_key(r), {}).setdefault(r["eps"], {})[r["model"]] = r
    for (kind, clip), by_eps in groups.items():
        title = "stored attack sets (transfer; * = the model is the set's source)" if kind == "transfer" else "white-box FGSM"
        rows = [["0", *(f"{clean.get(lab, float('nan')):.2f}" for lab in labels)]]
        for eps in sorted(by_eps):
            cells = []
            for lab in labels:
                r = by_eps[eps].get(lab)
                cells.append("-" if r is None else f"{r['error']:.2f}" + ("*" if r["attack"] == "whitebox-set" else ""))
            rows.append([f"{eps:g}", *cells])
        click.echo("")
        print_table(["eps", *labels], rows, plain=plain,
                    title=f"error (%) against eps: {title}, "
                          f"{'clipped to the pixel range' if clip == 'clip' else 'unclipped'}")


CSV_COLUMNS = ["model", "attack", "eps", "clip", "split", "n", "error", "loss", "set", "source"]


def _write_curve(path: Path, fmt: str, curve: list[dict]) -> None:
    from ..files import write_json_atomic, write_text_atomic
    from ..provenance import provenance

    if fmt == "json":
        write_json_atomic(path, {"format": "advbp-robustness-curve/1", "provenance": provenance(("torch",)),
                                 "rows": curve})
        return
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in curve:
        clip = "" if not r["clip"] else f"{r['clip'][0]:g}..{r['clip'][1]:g}"
        w.writerow([r["model"], r["attack"], f"{r['eps']:g}", clip, r["split"], r["n"], f"{r['error']:.4f}",
                    f"{r['loss']:.6f}", r["set"] or "", r["source"]])
    write_text_atomic(path, buf.getvalue())
