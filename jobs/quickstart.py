"""Embed a few bundled real proteins with a model and print shapes and timing.

python -m jobs.quickstart                     # fresh random `tiny` model
python -m jobs.quickstart --model path/to/hf_or_run_dir --n 16
"""

import sys
import time

from ankh_platform.core import cli as _cli


def main(argv: list[str] | None = None) -> None:
    ap = _cli.parser("jobs.quickstart", __doc__)
    _cli.add(ap, "--model", _cli.model_flag(None, "default tiny (random weights)", default="tiny"))
    ap.add_argument("--n", type=int, default=8, help="how many bundled sequences to embed")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    args = _cli.parse_args(ap, argv)

    import ankh
    from ankh_platform.core.samples import real_sequences

    seqs = real_sequences(args.n, 20, 600, seed=0)
    t0 = time.perf_counter()
    model = ankh.load(args.model, dtype=args.dtype)
    t1 = time.perf_counter()
    pooled = model.embed(seqs)
    per_res = model.embed(seqs, per_residue=True)
    t2 = time.perf_counter()
    print(f"model {args.model}: {model.num_params():,} parameters, loaded in {t1 - t0:.1f}s")
    print(f"pooled embeddings: {pooled.shape} {pooled.dtype}")
    print(f"per-residue: {[r.shape for r in per_res[:4]]} ...")
    print(
        f"embedded {len(seqs)} sequences ({sum(map(len, seqs))} residues) in {t2 - t1:.1f}s "
        "(includes compilation)"
    )


if __name__ == "__main__":
    sys.exit(_cli.run(main))
