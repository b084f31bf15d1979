"""bf16 against fp32 extraction on real Alpaca records with the embedded SmolLM2: speed, per-example feature
cosine (raw and centred) and the overlap of the 15% picks made from each.

    python bench/bf16_check.py --records 96 --max-length 128
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ALPACA = HERE.parents[1] / "shared" / "data" / "alpaca_cleaned.jsonl"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=96)
    p.add_argument("--max-length", type=int, default=128)
    a = p.parse_args(argv)

    from mads_fast.extraction import extract
    from mads_fast.model import cpu_bf16_support
    from mads_fast.solver import FacilityLocation
    from mads_fast.store import FeatureReader, load_solver_input

    work = Path(tempfile.mkdtemp(prefix="mads-bf16-"))
    try:
        rate = {}
        for dtype in ("fp32", "bf16"):
            t0 = time.perf_counter()
            stats = extract(ALPACA, work / dtype, dtype=dtype, limit=a.records, max_length=a.max_length,
                            progress=False)
            rate[dtype] = stats.tokens / (time.perf_counter() - t0)
        x = FeatureReader(work / "fp32").rows(np.arange(a.records)).astype(np.float64)
        y = FeatureReader(work / "bf16").rows(np.arange(a.records)).astype(np.float64)
        cos = lambda u, v: (u * v).sum(1) / np.linalg.norm(u, axis=1) / np.linalg.norm(v, axis=1)  # noqa: E731
        raw, centred = cos(x, y), cos(x - x.mean(0), y - y.mean(0))
        picks = [set(FacilityLocation(budget=0.15).fit(load_solver_input(work / d)).ranking_.tolist())
                 for d in ("fp32", "bf16")]
        print(f"native bf16: {cpu_bf16_support()}; tokens/s fp32 {rate['fp32']:.0f}, bf16 {rate['bf16']:.0f} "
              f"(bf16/fp32 {rate['bf16'] / rate['fp32']:.2f}); cosine raw min {raw.min():.7f}, centred min "
              f"{centred.min():.6f} (median {np.median(centred):.6f}); 15% picks in common "
              f"{len(picks[0] & picks[1])} of {len(picks[0])}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
