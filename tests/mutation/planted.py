"""Planted bugs (issue 16): each is a small edit of the source, made in a scratch clone, that a test must catch.

    ADVBP_DATA_DIR=... nice -n 10 python tests/mutation/planted.py [NAME...]   # all by default

For every bug: apply the edit to a clean clone of HEAD (/tmp/advbp-planted/src, with its own venv as in run.py),
run the listed test files, print which tests fail, restore. A bug whose edit no longer applies (the code moved)
is reported as such: update its fragment. The results of the last run are in tests/MUTATION.md."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import prepare  # noqa: E402

# name: (file, fragment, replacement, test files to run, what the bug is)
BUGS = {
    "resume-ignores-momentum": (
        "backends/network.py",
        "        self.velocity = [(self._array(state[f\"momentum.{wn}\"]), self._array(state[f\"momentum.{bn}\"]))",
        "        state = {}\n        self.velocity = [(self._array(state[f\"momentum.{wn}\"]), self._array(state[f\"momentum.{bn}\"]))",
        ["tests/test_resume_claims.py", "tests/test_cifar_layers_parity.py"],
        "a resumed run (either backend) ignores the momentum buffers saved in the checkpoint"),
    "headline-first-n-epochs": (
        "advbp_cli/evaluate.py", "values = [m[key] for m in metrics[-n:]]", "values = [m[key] for m in metrics[:n]]",
        ["tests/test_run_claims.py", "tests/test_cli.py", "tests/test_sweep.py"],
        "the run headline averages the first N epochs instead of the last N"),
    "headline-all-epochs": (
        "advbp_cli/evaluate.py", "values = [m[key] for m in metrics[-n:]]", "values = [m[key] for m in metrics]",
        ["tests/test_run_claims.py", "tests/test_cli.py"],
        "the run headline averages every epoch"),
    "numpy-sparsity-counts-non-zeros": (
        "backends/numpy.py", "    return a.size - np.count_nonzero(a)", "    return np.count_nonzero(a)",
        ["tests/test_run_claims.py", "tests/test_report.py", "tests/test_cli.py"],
        "the numpy backend's hidden-unit sparsity counts the non-zero activations"),
    "torch-sparsity-counts-non-zeros": (
        "backends/torch.py", "    return a.numel() - torch.count_nonzero(a)", "    return torch.count_nonzero(a)",
        ["tests/test_run_claims.py", "tests/test_report.py", "tests/test_cli.py"],
        "the torch backend's hidden-unit sparsity counts the non-zero activations"),
    "sparsity-wrong-layer-size": (
        "advbp_cli/evaluate.py",
        "    return [z / (total * s) if total else float(\"nan\") for z, s in zip(zeros, backend.model.hidden)]",
        "    return [z / (total * backend.model.hidden[0]) if total else float(\"nan\") for z, s in zip(zeros, backend.model.hidden)]",
        ["tests/test_run_claims.py"],
        "every layer's zero count divided by the first hidden layer's size"),
    "manifest-records-last-eps": (
        "advbp_cli/attack_folder.py", '        "eps": eps,\n        "clip": list(clip_range)',
        '        "eps": req.eps_list[-1],\n        "clip": list(clip_range)',
        ["tests/test_attack_claims.py", "tests/test_attack.py"],
        "every attack set's manifest records the last eps"),
    "source-error-on-clean-images": (
        "advbp_cli/attack_folder.py", "        error = error_of(net, z, data.y)\n        stored, extra = z,",
        "        error = error_of(net, data.x, data.y)\n        stored, extra = z,",
        ["tests/test_attack_claims.py", "tests/test_attack.py"],
        "the manifest's source error is measured on the clean images"),
    "pgd-keeps-the-last-restart": (
        "advbp_cli/attack_methods.py",
        "            take = (wrong > wrong_best) | ((wrong == wrong_best) & (losses > loss_best))",
        "            take = np.ones_like(wrong, dtype=bool)",
        ["tests/test_iterative_attacks.py"],
        "PGD keeps each sample's last restart instead of its worst case"),
    "pgd-same-start-every-restart": (
        "advbp_cli/attack_methods.py", "RandomStarts(params.seed, restart)", "RandomStarts(params.seed, 0)",
        ["tests/test_iterative_attacks.py"],
        "every PGD restart starts from the same random point"),
    "linf-step-not-projected": (
        "backends/step.py", "    z += s\n    return ops.clamp_(z, lo, hi)", "    z += s\n    return z",
        ["tests/test_iterative_attacks.py"],
        "BIM/PGD iterates are not projected onto the eps-ball and the pixel box"),
    "linf-step-ignores-step-size": (
        "backends/step.py", "    s = ops.sign(e)\n    s *= step_size\n", "    s = ops.sign(e)\n",
        ["tests/test_iterative_attacks.py"],
        "BIM/PGD steps by 1 (then the projection) whatever --step-size says"),
    "torch-fgsm-sign-flipped": (
        "backends/torch.py", "    return torch.sign(a)", "    return -torch.sign(a)",
        ["tests/test_algorithm1.py", "tests/test_fgsm.py"],
        "the torch backend's sign primitive is flipped, so its FGSM moves against the gradient"),
    "numpy-ignores-clip": (
        "backends/numpy.py", "def clip_(a: np.ndarray, lo: float, hi: float) -> np.ndarray:\n    return np.clip(a, lo, hi, out=a)",
        "def clip_(a: np.ndarray, lo: float, hi: float) -> np.ndarray:\n    return a",
        ["tests/test_algorithm1.py", "tests/test_fgsm.py"],
        "the numpy backend's clip primitive does nothing, so --clip is ignored"),
    "fgsm-ignores-clip": (
        "backends/step.py", "    if clip is not None:\n        ops.clip_(z, clip[0], clip[1])\n    return z",
        "    return z",
        ["tests/test_algorithm1.py", "tests/test_fgsm.py"],
        "the shared FGSM step ignores --clip in both backends"),
    "init-std-off-by-10-percent": (
        "advbp_cli/rng.py", "rng.standard_normal(shape) * init_std if", "rng.standard_normal(shape) * init_std * 1.1 if",
        ["tests/test_run_claims.py"],
        "weights drawn with 1.1 x init_std"),
    "init-biases-not-zero": (
        "advbp_cli/rng.py", "else np.zeros(shape)", "else np.full(shape, 1e-3)",
        ["tests/test_run_claims.py"],
        "biases start at 1e-3 instead of 0"),
    "train-mode-masks-ignore-seed": (
        "advbp_cli/attack.py", "masks = DropoutMasks(train_mode_cfg.runtime.seed, ATTACK_MASK_EPOCH)",
        "masks = DropoutMasks(0, ATTACK_MASK_EPOCH)",
        ["tests/test_attack_claims.py"],
        "--model-mode train draws its dropout masks from seed 0 whatever the run's seed"),
    "env-wins-over-data-dir-option": (
        "advbp_cli/data/paths.py",
        "    for value, origin in ((option, \"--data-dir\"), (os.environ.get(ENV_DATA_DIR), f\"${ENV_DATA_DIR}\")):",
        "    for value, origin in ((os.environ.get(ENV_DATA_DIR), f\"${ENV_DATA_DIR}\"), (option, \"--data-dir\")):",
        ["tests/test_data_claims.py"],
        "$ADVBP_DATA_DIR wins over --data-dir"),
}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("bugs", nargs="*", help=f"default: all of {', '.join(BUGS)}")
    p.add_argument("--work", type=Path, default=Path("/tmp/advbp-planted"))
    args = p.parse_args(argv)
    src, env = prepare(args.work, "HEAD")
    for name in args.bugs or list(BUGS):
        path, fragment, replacement, tests, what = BUGS[name]
        target = src / path
        original = target.read_text()
        if original.count(fragment) != 1:
            print(f"| {name} | {what} | fragment not found once in {path}: update planted.py |", flush=True)
            continue
        target.write_text(original.replace(fragment, replacement))
        try:
            tests = [t for t in tests if (src / t).exists()]
            proc = subprocess.run([f"{src.parent / 'venv' / 'bin' / 'python'}", "-m", "pytest", "-q", "-p",
                                   "no:cacheprovider", "-m", "not gpu", *tests, "--deselect",
                                   "tests/test_cifar_layers_parity.py::test_conv_net_gradients_match_finite_differences"], cwd=src, env=env,
                                  capture_output=True, text=True)
        finally:
            target.write_text(original)
        failed = sorted(set(re.findall(r"^FAILED (\S+)", proc.stdout, re.M) + re.findall(r"^ERROR (\S+)", proc.stdout, re.M)))
        verdict = "CAUGHT" if failed else "NOT CAUGHT"
        print(f"| {name} | {what} | {verdict}: {', '.join(f.split(' ')[0] for f in failed) or '-'} |", flush=True)


if __name__ == "__main__":
    main()
