"""`advbp attack`: attack sets (FGSM, BIM, PGD) from a trained network, one file per eps, with their provenance."""

from __future__ import annotations

import click

from ..attack import LOSSES, parse_eps
from ..attack_folder import AttackRequest, make_attack_sets
from ..attack_methods import STEP_RULE_TEXT, method_names, resolve_attacks
from ..cliparams import POSITIVE
from ..errors import UsageProblem
from .config_options import runtime_options
from .common import apply_command_threads, backend_options, data_dir_option, emit_json, explain_stray_values, json_option, no_download_option, threads_option


def attack_method_options(f):
    """--method, --steps, --step-size, --restarts, --seed: the same names in `advbp attack` and `advbp eval`
    (choices from the attack registry)."""
    for decorator in reversed([
        click.option("--steps", type=click.IntRange(min=1), default=None,
                     help="Iterations K of bim and pgd (required for them): about K input-gradient passes per restart."),
        click.option("--step-size", type=POSITIVE, default=None,
                     help=f"Step a of every iteration, in input units. Default: {STEP_RULE_TEXT}, per eps."),
        click.option("--restarts", type=click.IntRange(min=1), default=None,
                     help="pgd: random starts R (default 1); each sample keeps its worst case over them."),
        click.option("--seed", type=click.IntRange(min=0), default=None,
                     help="pgd: seed of the random starts (default 0), recorded in the manifest."),
    ]):
        f = decorator(f)
    return f


@click.command("attack")
@click.argument("sources", metavar="SOURCE", nargs=-1, required=True, type=click.Path())
@click.option("--eps", "eps_values", multiple=True, required=True,
              help="Radius of the L-inf ball (FGSM: the step); repeat it, or give a list (0.1,0.25) or an inclusive "
                   "range START:STOP:STEP (0.05:0.5:0.05). One set per eps.")
@click.option("--method", type=click.Choice(method_names()), default="fgsm", show_default=True,
              help="fgsm: x + eps sign(dJ/dx); bim: --steps iterations of size --step-size, each projected onto the "
                   "eps-ball and the clipping range; pgd: bim from a uniform random start, the worst of --restarts.")
@attack_method_options
@click.option("--split", type=click.Choice(["validation", "test", "train"]), default="validation", show_default=True,
              help="Images to perturb (validation: the last 10k training images, the paper's choice).")
@click.option("--clip/--no-clip", default=None,
              help="Clip the attack inputs to the pixel range [0, 1] as the source's preprocessing maps it: [0, 1] "
                   "(scale01), [-m/s, (255-m)/s] (simple). Default: clip, except ZCA inputs, which have no such "
                   "box and are left unclipped (--clip is refused for them). --no-clip keeps x + eps*sign(e) as is.")
@click.option("--format", "fmt", type=click.Choice(["npz", "idx"]), default="npz", show_default=True,
              help="npz: float inputs exactly as computed; idx: uint8 MNIST files (pixels quantised to round(255 z)); "
                   "MNIST scale01 runs only.")
@click.option("--loss", type=click.Choice(LOSSES), default="model", show_default=True,
              help="Objective whose input gradient is used: the source network's own training objective (model), "
                   "or another one on the same logits.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Samples per input-gradient computation: memory only. Each sample's gradient is its own (no "
                   "batch mean), so the signs do not depend on it, except a component within float rounding of "
                   "zero, whose sign can follow the matmul's summation order.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N images of the split.")
@click.option("--model-mode", type=click.Choice(["eval", "train"]), default="eval", show_default=True,
              help="eval: dropout off, as for evaluation; train: dropout active as in training (masks from the "
                   "run's seed, one draw per batch, so they depend on --batch-size).")
@runtime_options("dtype", default_note="the checkpoint's (also the stored npz inputs' type)")
@backend_options
@threads_option
@data_dir_option(reads_runs=True)
@no_download_option
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Folder for the sets.")
@click.option("--overwrite", is_flag=True, help="Replace the sets in --out (advbp's own files only; the folder is "
              "written as a whole, so a failure or a kill leaves the old sets).")
@click.option("--compress/--no-compress", default=True, show_default=True, help="Deflate npz files (still no pickle).")
@json_option
def attack_cmd(sources, eps_values, method, steps, step_size, restarts, seed, split, clip, fmt, loss, batch_size,
               limit, model_mode, dtype, backend, device, threads, data_dir, no_download, out_dir, overwrite, compress,
               as_json):
    """Write attack sets computed with SOURCE (a run directory or checkpoint): FGSM z = x + eps * sign(dJ/dx), or
    the iterative BIM and PGD under the same L-inf ball.

    One set per eps, each with its perturbed inputs, true labels, the indices of the source images and a JSON
    manifest (method and every parameter, eps, split, clipping, data checksum, the source checkpoint's sha256 and
    config, advbp version, the source's error on the set). Evaluate other models on them with
    `advbp eval MODEL --attack-set FOLDER`.
    """
    threads = apply_command_threads(threads)
    explain_stray_values(sources[1:], "--eps", "SOURCE")
    if len(sources) > 1:
        raise UsageProblem(f"advbp attack takes one SOURCE (got {len(sources)}: {' '.join(sources)})")
    (params,) = resolve_attacks([method], steps=steps, step_size=step_size, restarts=restarts, seed=seed, loss=loss,
                                batch_size=batch_size, model_mode=model_mode)
    request = AttackRequest(sources[0], parse_eps(eps_values), params, out_dir, split=split, clip=clip,
                            fmt=fmt, limit=limit, dtype=dtype, backend=backend, device=device, threads=threads,
                            data_dir=data_dir, download=not no_download, overwrite=overwrite, compress=compress)
    log = lambda m: click.echo(m, err=True)  # noqa: E731
    result = make_attack_sets(request, log=log, echo=None if as_json else click.echo)
    if as_json:
        emit_json(result)
    else:
        click.echo(f"{len(result['sets'])} {method} set(s) of {result['n']} {split} images from {sources[0]} in "
                   f"{result['seconds']:.1f}s; manifest {result['manifest']}")
