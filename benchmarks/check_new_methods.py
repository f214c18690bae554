"""Check PDH, ACQ and FSH on a real features file against random codes and CCA-ITQ.

Trains every method on the file's ``train`` split (default settings; CCA-ITQ with reg = 1.0),
encodes the ``query`` and ``database`` splits, and prints mAP@k (k = 1000 by default) of
image->text and text->image retrieval at each code length, with the seconds each fit took.
Random codes are fresh uniform bits per item (the chance level), averaged over 5 draws.

    python benchmarks/check_new_methods.py [--features /work/shared/data/openclipart/features.h5]
        [--bits 16 32 64] [--k 1000] [--methods pdh acq fsh acq:reg=1 fsh:hash=kernel,lambda=3] [--validation]

A method is a registry name, optionally with settings over its defaults after a colon.

``--validation`` never looks at the query split: it trains on the first 80% of ``train`` and
queries the rest of ``train`` against that 80% (for choosing settings without the test queries).

One run on openclipart (2,447 training pairs = the database, 272 queries; seed 0; default
settings unless named; fit seconds on a shared, heavily loaded 2-core machine), mAP@1000:

    method           bits  I->T    T->I    fit s
    random             16  0.1451  0.1451     0.0
    ccaitq reg=1       16  0.4414  0.4756    15.2
    pdh                16  0.4110  0.4340    47.3
    acq                16  0.2595  0.3050     8.0
    fsh                16  0.2746  0.2991    26.5
    pdh reg=1          16  0.4216  0.4276    72.7
    acq reg=1          16  0.4415  0.4812    15.6
    fsh hash=kernel    16  0.3441  0.3688    38.4
    random             32  0.1451  0.1457     0.0
    ccaitq reg=1       32  0.4465  0.4899    33.0
    pdh                32  0.4278  0.4471    99.4
    acq                32  0.2431  0.3014    40.0
    fsh                32  0.2874  0.3253    41.5
    pdh reg=1          32  0.4325  0.4510   111.8
    acq reg=1          32  0.4487  0.4875    57.7
    fsh hash=kernel    32  0.3906  0.4320    38.5
    random             64  0.1472  0.1478     0.0
    ccaitq reg=1       64  0.4400  0.4866    63.3
    pdh                64  0.4482  0.4734   144.9
    acq                64  0.2306  0.2897    69.8
    fsh                64  0.3260  0.3586    42.9
    pdh reg=1          64  0.4503  0.4625    75.7
    acq reg=1          64  0.4412  0.4904     6.9
    fsh hash=kernel    64  0.4173  0.4513    13.4

(``python benchmarks/check_new_methods.py --methods pdh acq fsh pdh:reg=1 acq:reg=1
fsh:hash=kernel``.) ACQ and PDH at their default CCA ridge (reg = 1e-4, as CCA-ITQ's default)
over-fit CCA in 1,280 dimensions on 2,447 pairs; reg is in their tune grids.
"""

from __future__ import annotations

import argparse
import time

import h5py
import numpy as np

from pipeline.eval.codes import pack_bits
from pipeline.eval.metrics import map_at_k
from pipeline.methods import REGISTRY, CCAITQ


def load(path: str, validation: bool) -> dict:
    with h5py.File(path, "r") as f:
        x, y, lab = f["image"][:], f["text"][:], f["labels"][:]
        tr, q, db = f["train"][:], f["query"][:], f["database"][:]
    if validation:
        cut = int(0.8 * len(tr))
        tr, q, db = tr[:cut], tr[cut:], tr[:cut]
    return {"x": x, "y": y, "labels": lab, "train": tr, "query": q, "database": db}


def scores(d: dict, enc_x, enc_y, k: int) -> tuple[float, float]:
    q, db, lab = d["query"], d["database"], d["labels"]
    i2t = map_at_k(pack_bits(enc_x(d["x"][q])), pack_bits(enc_y(d["y"][db])), lab[q], lab[db], k)
    t2i = map_at_k(pack_bits(enc_y(d["y"][q])), pack_bits(enc_x(d["x"][db])), lab[q], lab[db], k)
    return i2t, t2i


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", default="/work/shared/data/openclipart/features.h5")
    ap.add_argument("--bits", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--methods", nargs="+", default=["pdh", "acq", "fsh"],
                    help="name[:key=value,...], e.g. fsh:lambda=3,hash=kernel")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--validation", action="store_true")
    args = ap.parse_args()
    d = load(args.features, args.validation)
    specs = []
    for spec in args.methods:
        name, _, kvs = spec.partition(":")
        specs.append((spec.replace(":", " ").replace(",", " "), name,
                      dict(kv.split("=", 1) for kv in kvs.split(",") if kv)))
    print(f"{args.features}: {len(d['train'])} training pairs, {len(d['query'])} queries, "
          f"{len(d['database'])} database items; image {d['x'].shape[1]}-d, text {d['y'].shape[1]}-d"
          + (" (validation: queries from train)" if args.validation else ""))
    print(f"mAP@{args.k}, I->T / T->I")
    rows = []
    for bits in args.bits:
        rng = np.random.default_rng(args.seed)
        rnd = np.mean([scores(d, lambda a: rng.integers(0, 2, (len(a), bits), dtype=np.uint8),
                              lambda a: rng.integers(0, 2, (len(a), bits), dtype=np.uint8), args.k)
                       for _ in range(5)], axis=0)
        rows.append(("random", bits, *rnd, 0.0))
        candidates = [("ccaitq reg=1", CCAITQ(bits, {"reg": 1.0}))]
        candidates += [(label, REGISTRY[name](bits, settings)) for label, name, settings in specs]
        for label, model in candidates:
            t = time.perf_counter()
            model.fit(d["x"][d["train"]], d["y"][d["train"]], seed=args.seed)
            sec = time.perf_counter() - t
            rows.append((label, bits, *scores(d, model.encode_image, model.encode_text, args.k), sec))
    width = max(len(r[0]) for r in rows)
    print(f"{'method':<{width}}  bits  I->T    T->I    fit s")
    for label, bits, i2t, t2i, sec in rows:
        print(f"{label:<{width}}  {bits:>4}  {i2t:.4f}  {t2i:.4f}  {sec:6.1f}")


if __name__ == "__main__":
    main()
