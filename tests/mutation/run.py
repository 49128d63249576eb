"""Mutation testing of the modules that carry the paper's arithmetic and the artefacts (tests/MUTATION.md).

    nice -n 10 python tests/mutation/run.py                    # every group in tests/mutation/groups.toml
    nice -n 10 python tests/mutation/run.py trainer attack     # some groups
    python tests/mutation/run.py --rev d120ae2 ...             # another revision (its own tests), e.g. a BEFORE score
    python tests/mutation/run.py --summary                     # reprint the last results, no work

Cosmic Ray (`pip install cosmic-ray`, or `pip install -e '.[mutation]'`) writes each mutant into the source file,
runs the group's tests in a fresh process and restores the file. So the work happens in a scratch clone of the
repository (--work, default /tmp/advbp-mutation/src, made from the committed revision --rev), never in your
checkout, with its own virtual environment that sees this interpreter's packages. Sessions are sqlite files in
--work: an interrupted run continues where it stopped when run again with the same arguments (--fresh restarts).

Sampling: a full run is thousands of mutants (hours on 2 cores), so each module gets a deterministic sample of
`per_file` mutants: its mutants in source order (line, column, operator, occurrence), then every k-th one starting
with the first, k = ceil(count / per_file). The same rule must be used for any score compared with another.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import tomllib
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def sh(*cmd, cwd=None, env=None, check=True, capture=False):
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, check=check, text=True,
                          capture_output=capture)


def prepare(work: Path, rev: str) -> tuple[Path, dict]:
    """A clone of `rev` in work/src with a venv in work/venv whose python imports advbp from the clone and every
    other package from the interpreter running this script."""
    src, venv = work / "src", work / "venv"
    if src.exists():
        shutil.rmtree(src)
    work.mkdir(parents=True, exist_ok=True)
    sh("git", "clone", "-q", "--no-hardlinks", REPO, src)
    sh("git", "checkout", "-q", rev, cwd=src)
    # this checkout's mutation groups and runner, whatever the revision under test holds
    shutil.copytree(HERE, src / "tests" / "mutation", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    if not (venv / "bin" / "python").exists():
        sh(sys.executable, "-m", "venv", "--system-site-packages", venv)
        site = sh(venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                  capture=True).stdout.strip()
        # the packages of the interpreter running this script (e.g. a developer's venv), after the venv's own
        Path(site, "advbp-mutation-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    sh(venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "-e", src)
    env = dict(os.environ, PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    env.setdefault("ADVBP_DATA_DIR", str(REPO.parent / "shared" / "data"))
    return src, env


def test_command(group: dict, src: Path) -> str:
    tests = [t for t in group["tests"] if (src / t.split("::")[0]).exists()]
    if not tests:
        raise SystemExit(f"none of the tests of this group exist in {src}: {group['tests']}")
    k = f" -k {json.dumps(group['deselect'])}" if group.get("deselect") else ""
    return f"python -m pytest -x -q -p no:cacheprovider -p no:randomly {' '.join(tests)}{k}"


def sample(db, per_file: int) -> dict[str, tuple[int, int]]:
    """Marks all but the sampled mutants of each module as skipped; returns {module: (sampled, total)}."""
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    by_module = defaultdict(list)
    for item in db.pending_work_items:
        (m,) = item.mutations
        by_module[str(m.module_path)].append((tuple(m.start_pos), m.operator_name, m.occurrence, item.job_id))
    out = {}
    for module, items in by_module.items():
        items.sort()
        k = max(1, math.ceil(len(items) / per_file))
        keep = {job for i, (*_, job) in enumerate(items) if i % k == 0}
        for *_, job in items:
            if job not in keep:
                db.set_result(job, WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output="not in the sample"))
        out[module] = (len(keep), len(items))
    return out


def run_group(name: str, group: dict, settings: dict, src: Path, env: dict, work: Path, fresh: bool) -> None:
    from cosmic_ray.work_db import use_db

    session = work / f"{name}.sqlite"
    config = work / f"{name}.toml"
    cmd = test_command(group, src)
    t0 = time.monotonic()
    base = subprocess.run(cmd, shell=True, cwd=src, env=env, capture_output=True, text=True)
    baseline_s = time.monotonic() - t0
    if base.returncode != 0:
        raise SystemExit(f"[{name}] the tests fail without any mutation:\n{cmd}\n{base.stdout[-3000:]}")
    timeout = max(settings["timeout_min_s"], settings["timeout_factor"] * baseline_s)
    config.write_text(
        "[cosmic-ray]\n"
        f"module-path = {json.dumps(group['modules'])}\n"
        f"timeout = {timeout:.0f}.0\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(cmd)}\n"
        "[cosmic-ray.distributor]\nname = \"local\"\n")
    if fresh or not session.exists():
        session.unlink(missing_ok=True)
        sh(sys.executable, "-m", "cosmic_ray.cli", "init", config, session, cwd=src, env=env)
        with use_db(str(session)) as db:
            counts = sample(db, settings["per_file"])
        print(f"[{name}] baseline {baseline_s:.0f} s, timeout {timeout:.0f} s; sampled: "
              + ", ".join(f"{m} {s}/{t}" for m, (s, t) in sorted(counts.items())), flush=True)
    t0 = time.monotonic()
    sh(sys.executable, "-m", "cosmic_ray.cli", "exec", config, session, cwd=src, env=env)
    wall = time.monotonic() - t0
    meta = work / f"{name}.json"
    old = json.loads(meta.read_text()) if meta.exists() and not fresh else {}
    meta.write_text(json.dumps({"command": cmd, "baseline_s": baseline_s, "timeout_s": timeout,
                                "exec_wall_s": old.get("exec_wall_s", 0) + wall,
                                "load_after": os.getloadavg(), "rev": sh("git", "rev-parse", "HEAD", cwd=src,
                                                                       capture=True).stdout.strip()}))


def summary(work: Path, names: list[str]) -> str:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    lines = ["| module | sampled / all | killed | timeout | survived | incompetent | score |", "|---|---|---|---|---|---|---|"]
    survivors = []
    for name in names:
        session = work / f"{name}.sqlite"
        if not session.exists():
            continue
        with use_db(str(session), mode=WorkDB.Mode.open) as db:
            rows = defaultdict(Counter)
            for item, result in db.completed_work_items:
                (m,) = item.mutations
                c = rows[str(m.module_path)]
                c["all"] += 1
                if result.worker_outcome == WorkerOutcome.SKIPPED:
                    continue
                c["sampled"] += 1
                if result.test_outcome == TestOutcome.SURVIVED:
                    c["survived"] += 1
                    survivors.append((str(m.module_path), m.start_pos[0], m.operator_name, m.occurrence, result.diff))
                elif result.test_outcome == TestOutcome.KILLED:
                    c["timeout" if (result.output or "").strip() == "timeout" else "killed"] += 1
                else:
                    c["incompetent"] += 1
            for item in db.pending_work_items:
                (m,) = item.mutations
                rows[str(m.module_path)]["all"] += 1
                rows[str(m.module_path)]["pending"] += 1
            for module, c in sorted(rows.items()):
                done = c["killed"] + c["timeout"] + c["survived"]
                score = f"{100 * (c['killed'] + c['timeout']) / done:.0f} %" if done else "-"
                pend = f" (+{c['pending']} pending)" if c["pending"] else ""
                lines.append(f"| {module} | {c['sampled']}{pend} / {c['all']} | {c['killed']} | {c['timeout']} | "
                             f"{c['survived']} | {c['incompetent']} | {score} |")
    lines.append("")
    lines.append(f"surviving mutants: {len(survivors)}")
    for module, line, op, occ, diff in survivors:
        body = "\n".join(ln for ln in (diff or "").splitlines() if ln[:1] in "+-" and ln[:3] not in ("+++", "---"))
        lines.append(f"- {module}:{line} {op} #{occ}\n```diff\n{body}\n```")
    return "\n".join(lines)


def main(argv=None) -> None:
    # started as a background job, this process would ignore SIGINT, and so would every test process it starts
    # (ignored signals are inherited): the Ctrl-C tests need Python's own handler
    signal.signal(signal.SIGINT, signal.default_int_handler)
    cfg = tomllib.loads((HERE / "groups.toml").read_text())
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("groups", nargs="*", help=f"default: all of {', '.join(cfg['groups'])}")
    p.add_argument("--rev", default="HEAD", help="the committed revision to test (default HEAD)")
    p.add_argument("--work", type=Path, default=Path(os.environ.get("ADVBP_MUTATION_WORK", "/tmp/advbp-mutation")))
    p.add_argument("--fresh", action="store_true", help="start the sessions again instead of continuing them")
    p.add_argument("--summary", action="store_true", help="only print the results found in --work")
    args = p.parse_args(argv)
    names = args.groups or list(cfg["groups"])
    unknown = sorted(set(names) - set(cfg["groups"]))
    if unknown:
        p.error(f"unknown group(s) {unknown}; known: {sorted(cfg['groups'])}")
    if not args.summary:
        src, env = prepare(args.work, args.rev)
        for name in names:
            t0 = time.monotonic()
            run_group(name, cfg["groups"][name], cfg["settings"], src, env, args.work, args.fresh)
            print(f"[{name}] done in {time.monotonic() - t0:.0f} s (load {os.getloadavg()[0]:.1f})", flush=True)
    report = summary(args.work, names)
    (args.work / "summary.md").write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    main()
