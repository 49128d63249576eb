"""`advbp eval`: error, loss and hidden-unit sparsity of trained networks on a split; with --attack-set or --eps
(--method fgsm|bim|pgd) also their error on stored attack sets (transfer) and under white-box attacks, as a
robustness curve. The work is advbp_cli.robustness.evaluate_models; this module parses and prints."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..attack import LOSSES, parse_eps
from ..attack_methods import method_names, resolve_attacks
from ..cliparams import FINITE_PERCENT
from ..errors import UsageProblem, os_problem
from ..robustness import EvalRequest, curve_format, evaluate_models, expand_sets, write_curve
from .attack import attack_method_options
from .config_options import runtime_options
from .common import apply_command_threads, backend_options, data_dir_option, emit_json, explain_stray_values, json_option, no_download_option, threads_option
from .tables import is_plain, plain_option, print_table


@click.command("eval")
@click.argument("sources", metavar="SOURCE...", nargs=-1, required=True, type=click.Path())
@click.option("--split", type=click.Choice(["test", "validation", "train"]), default=None,
              help="Default: the split the run evaluated on.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Only the first N images of the split (stored attack sets are used whole).")
@click.option("--attack-set", "attack_sets", multiple=True, type=click.Path(),
              help="Error on a stored attack set (an .npz, or an idx set's .json), or on every set of a folder "
                   "written by `advbp attack`. Repeatable.")
@click.option("--eps", "eps_values", multiple=True,
              help="White-box attacks (each model attacked with its own gradient) at each eps, on --split; a value, "
                   "list or START:STOP:STEP.")
@click.option("--fgsm-eps", "fgsm_eps", multiple=True, help="The older name of --eps, for --method fgsm.")
@click.option("--method", "methods", multiple=True,
              help=f"White-box attacks at every --eps: {', '.join(method_names())}; repeat it or give a list "
                   "(fgsm,pgd) to draw their curves side by side. Default: fgsm.")
@attack_method_options
@click.option("--loss", "gradient_loss", type=click.Choice(LOSSES), default="model", show_default=True,
              help="Objective whose input gradient drives the white-box attacks (as `advbp attack --loss`): each "
                   "model's own training objective (model), or another one on its logits.")
@click.option("--clip/--no-clip", "clip", default=None,
              help="Clip white-box attack inputs to the pixel range [0, 1] as each model's preprocessing maps it "
                   "(as `advbp attack --clip`). Default: clip, except ZCA models, which are left unclipped.")
@click.option("--fgsm-clip/--fgsm-no-clip", "fgsm_clip", default=None, help="The older name of --clip/--no-clip.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Samples per input-gradient computation of the white-box attacks: memory only (each sample's "
                   "gradient is its own, so the attacks do not depend on it, as in `advbp attack`).")
@click.option("--curve-out", type=click.Path(dir_okay=False), default=None,
              help="Save the robustness curve (error per model, attack, method and eps) as .csv or .json.")
@runtime_options("dtype", default_note="the checkpoint's: the arithmetic of evaluation and white-box attacks")
@backend_options
@threads_option
@data_dir_option(reads_runs=True)
@no_download_option
@click.option("--max-error", type=FINITE_PERCENT, default=None,
              help="Exit 1 when the clean error (%) is above this: a gate for CI.")
@plain_option
@json_option
def eval_cmd(sources, split, limit, attack_sets, eps_values, fgsm_eps, methods, steps, step_size, restarts, seed,
             gradient_loss, clip, fgsm_clip, batch_size, curve_out, dtype, backend, device, threads, data_dir,
             no_download, max_error, plain, as_json):
    """Evaluate run directories or checkpoint files (any backend can load any checkpoint).

    With several SOURCEs and --attack-set FOLDER or --eps 0.05:0.5:0.05 (white-box, --method fgsm,pgd --steps 40)
    it prints the robustness curve, error against eps per model and attack; --curve-out saves it. With --json: one
    SOURCE prints one object (as always), several print {"models": [...], "curve": [...]}. Units: every error and
    zero fraction is in percent (`error`, `hidden_zero_percent`; "units" in the JSON says so), losses are means
    per sample.
    """
    threads = apply_command_threads(threads)
    req = _request(sources, split, limit, attack_sets, eps_values, fgsm_eps, methods, steps, step_size, restarts,
                   seed, gradient_loss, clip, fgsm_clip, batch_size, curve_out)
    req.backend, req.device, req.threads, req.dtype = backend, device, threads, dtype
    req.data_dir, req.download, req.max_error = data_dir, not no_download, max_error
    curve_fmt = curve_format(curve_out) if curve_out else None
    log = lambda m: click.echo(m, err=True)  # noqa: E731
    outcome = evaluate_models(req, log=log, on_model=None if as_json else _print_model)
    if curve_out:
        try:
            write_curve(Path(curve_out), curve_fmt, outcome.curve)
        except OSError as exc:
            raise os_problem(exc, f"write --curve-out {curve_out}") from None
    results = outcome.results
    if as_json:
        emit_json(results[0] if len(results) == 1 else
                  {"models": results, **({"curve": outcome.curve} if req.attacking else {})})
    elif req.attacking and (len(results) > 1 or curve_out):
        _print_curve(outcome.curve, req.labels, is_plain(plain))
    if curve_out and not as_json:
        click.echo(f"curve saved to {curve_out}")
    for src, name, err in outcome.failed:
        click.echo(f"FAIL: {src}: {name} error {err:.2f}% is above --max-error {max_error}%", err=True)
    if outcome.failed:
        sys.exit(1)


def _request(sources, split, limit, attack_sets, eps_values, fgsm_eps, methods, steps, step_size, restarts, seed,
             gradient_loss, clip, fgsm_clip, batch_size, curve_out) -> EvalRequest:
    """The options as one request, every combination checked before any model is loaded."""
    eps_option = "--fgsm-eps" if fgsm_eps and not eps_values else "--eps"
    explain_stray_values(sources, eps_option if (fgsm_eps or eps_values) else None, "SOURCE")
    for src in sources:  # `--attack-set a.npz b.npz` makes b.npz a SOURCE
        if Path(src).suffix.lower() in (".npz", ".json", ".idx") and Path(src).is_file():
            raise UsageProblem(f"{src} was read as a SOURCE (a run directory or checkpoint) but looks like an attack "
                               "set: --attack-set takes one value each time (repeat it, or give the sets' folder)")
    names = [n.strip() for v in methods for n in str(v).split(",") if n.strip()] or ["fgsm"]
    if fgsm_eps and names != ["fgsm"]:
        raise UsageProblem(f"--fgsm-eps is the older name of --eps for --method fgsm; with --method "
                           f"{','.join(names)} give --eps")
    if clip is not None and fgsm_clip is not None and clip != fgsm_clip:
        raise UsageProblem("--clip/--no-clip and --fgsm-clip/--fgsm-no-clip (its older name) disagree; give one")
    values = [*eps_values, *fgsm_eps]
    eps_list = parse_eps(values, eps_option) if values else []
    if not eps_list and (methods or steps or step_size or restarts or seed is not None or gradient_loss != "model"):
        raise UsageProblem("--method, --steps, --step-size, --restarts, --seed and --loss choose the white-box "
                           "attacks run at each --eps: give --eps too (e.g. --eps 0.1,0.3)")
    attacks = resolve_attacks(names, steps=steps, step_size=step_size, restarts=restarts, seed=seed,
                              loss=gradient_loss, batch_size=batch_size) if eps_list else []
    set_paths = expand_sets(attack_sets)
    if curve_out and not (set_paths or eps_list):
        raise UsageProblem("--curve-out needs --attack-set or --eps (a curve of error against eps)")
    clip_option = "--fgsm-clip" if fgsm_clip is not None and clip is None else "--clip"
    return EvalRequest(list(sources), _labels(sources), split, limit, set_paths, eps_list, attacks,
                       clip if clip is not None else fgsm_clip, clip_option, eps_option)


def _labels(sources) -> list[str]:
    """Short names for tables: the run folder's (or checkpoint's) name, the full path where names clash."""
    short = [Path(s).name or str(s) for s in sources]
    return [s if short.count(s) == 1 else str(src) for s, src in zip(short, sources)]


def _print_model(result: dict) -> None:
    ev_n, err = result["n"], result["error"]
    sparsity = ", ".join(f"{z:.1f}%" for z in result["hidden_zero_percent"])
    click.echo(f"{result['source']}: {result['split']} error {err:.2f}% ({int(round(err * ev_n / 100))}/{ev_n}), "
               f"loss {result['loss']:.4f}, hidden zeros per layer [{sparsity}] [{result['backend']}]")
    for r in result.get("attacks", [])[1:]:
        clip = "clipped" if r["clip"] else "unclipped"
        what = {"transfer": "transfer", "whitebox-set": "own set", "whitebox": "white-box"}[r["attack"]]
        what = f"{what} {attack_title(r)}"
        where = f" {r['set']}" if r["set"] else f" on {r['split']}"
        extra = ""
        if r.get("manifest_source_error") is not None and r["attack"] == "whitebox-set":
            extra = f" (manifest: {r['manifest_source_error']:.2f}%)"
        click.echo(f"  {what:13s} eps {r['eps']:<5g} {clip:9s} error {r['error']:6.2f}% "
                   f"({int(round(r['error'] * r['n'] / 100))}/{r['n']}){extra}{where}")


def attack_title(r: dict) -> str:
    """FGSM, BIM (10 steps), PGD (40 steps, 5 restarts): a row's attack method with its parameters."""
    method = r.get("method") or "fgsm"
    extra = [_count(r.get("steps"), "step"), _count(r.get("restarts"), "restart")]
    extra = ", ".join(e for e in extra if e)
    return method.upper() + (f" ({extra})" if extra else "")


def _count(n, noun: str) -> str:
    return "" if not n else f"{n} {noun}" + ("" if n == 1 else "s")


def _curve_key(r: dict):
    clip = "clip" if r["clip"] else "noclip"
    kind = "transfer" if r["attack"] in ("transfer", "whitebox-set") else r["attack"]
    return kind, attack_title(r), clip


def _print_curve(curve: list[dict], labels: list[str], plain: bool) -> None:
    """One table per attack kind (stored sets / white-box), method and clipping: rows eps, columns models."""
    clean = {r["model"]: r["error"] for r in curve if r["attack"] == "none"}
    groups: dict = {}
    for r in curve:
        if r["attack"] != "none":
            groups.setdefault(_curve_key(r), {}).setdefault(r["eps"], {})[r["model"]] = r
    for (kind, method, clip), by_eps in groups.items():
        title = (f"stored {method} attack sets (transfer; * = the model is the set's source)" if kind == "transfer"
                 else f"white-box {method}")
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


