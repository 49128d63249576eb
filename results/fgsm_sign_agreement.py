"""How far the float32 FGSM directions of a network are from its float64 ones, and how the batch size moves them
(results/attack.md, issue 14's "before" numbers): for each gradient loss, the samples and pixels whose
sign(dJ_i/dx_i) differs between float32 and float64, the samples with an exactly zero gradient, and whether the
signs depend on the batch size (1, 1000, 10000).

    python results/fgsm_sign_agreement.py results/runs/section3/src [--split validation] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from advbp_cli.attack import fgsm_signs, gradient_network
from advbp_cli.model_data import load_models


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source")
    ap.add_argument("--split", default="validation")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    out = {"source": args.source, "split": args.split, "losses": {}}
    models = {dt: load_models([args.source], dtype=dt, data_dir=args.data_dir, download=False, log=lambda m: None)[0]
              for dt in ("float32", "float64")}
    for loss in ("sigmoid_bce", "softmax_ce"):
        signs, row = {}, {}
        for dt, m in models.items():
            data = m.split(args.split)
            gnet, _ = gradient_network(m.net, m.cfg, loss)
            by_batch = {bs: fgsm_signs(gnet, data.x, data.y, bs) for bs in (1, 1000, 10000)}
            signs[dt] = by_batch[1000].signs
            row[dt] = {"zero_gradient_samples": {bs: g.zero_samples for bs, g in by_batch.items()},
                       "samples_whose_signs_differ_from_batch_1": {
                           bs: int((g.signs != by_batch[1].signs).any(axis=1).sum()) for bs, g in by_batch.items()}}
        differ = signs["float32"] != signs["float64"]
        row["float32_vs_float64"] = {"samples": int(differ.any(axis=1).sum()), "pixels": int(differ.sum()),
                                     "n": int(len(differ)), "pixels_total": int(differ.size)}
        out["losses"][loss] = row
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
