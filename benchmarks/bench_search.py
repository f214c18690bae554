"""`cmimh search` end to end on a built index: query latency, and how often a caption finds its image.

    .venv/bin/python benchmarks/bench_search.py results/demo/cmimh/64/index --manifest data/demo/manifest.jsonl

For N database items, their own caption (from the manifest) is typed as a text query through the
index's text encoder, and we count how often the item's image is within the top k. Prints figures.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from pipeline.data.manifest import read_manifest
from pipeline.eval.codes import pack_bits
from pipeline.eval.hamming import topk
from pipeline.search.index import image_query_features, load_index, search, text_query_features


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("index")
    ap.add_argument("--manifest", required=True)
    ap.add_argument("-n", type=int, default=300, help="captions to try")
    ap.add_argument("-k", type=int, default=10)
    a = ap.parse_args()
    t = time.perf_counter()
    index = load_index(a.index)
    print(f"index loaded in {time.perf_counter() - t:.2f} s: {len(index.ids)} items, {index.bits} bits")
    m = read_manifest(a.manifest)
    caption = {p.id: p.caption for p in m.pairs}
    rng = np.random.default_rng(0)
    rows = rng.choice(len(index.ids), size=min(a.n, len(index.ids)), replace=False)
    texts = [caption[index.item_id(r)] for r in rows]
    # one CLI-equivalent query, timed (encoder load included, as a user would see it)
    t = time.perf_counter()
    search(index, text=texts[0], k=a.k)
    print(f"one text query through search(): {time.perf_counter() - t:.3f} s (text encoder load included)")
    t = time.perf_counter()
    codes = index.model.encode_text(text_query_features(index, texts))
    idx, _ = topk(pack_bits(codes), index.db_image, a.k)
    dt = time.perf_counter() - t
    hit = (idx == rows[:, None]).any(axis=1)
    print(f"{len(rows)} captions encoded and searched in {dt:.2f} s ({1000 * dt / len(rows):.1f} ms per query)")
    print(f"own image within the top {a.k}: {hit.mean():.3f} ({hit.sum()}/{len(rows)})")
    t = time.perf_counter()
    feats = image_query_features(index, [m.root / m.pairs[0].image])
    search_codes = index.model.encode_image(feats)
    topk(pack_bits(search_codes), index.db_text, a.k)
    print(f"one image query (AlexNet + PCA + encoder + ranking): {time.perf_counter() - t:.3f} s")


if __name__ == "__main__":
    main()
