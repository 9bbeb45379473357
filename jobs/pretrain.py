"""Pretrain Ankh with Ray Train + sharded JAX: ``python -m jobs.pretrain [--config PRESET] [k=v ...]``.

With no arguments: a local Ray instance, the ``tiny`` model, the bundled real sample under
``data/``, a few minutes on 2 CPU cores; the checkpoint lands under ``outputs/pretrain/``
(``--output DIR`` overrides). Re-running with the same ``name`` and output resumes the run.
On a cluster: ``ray job submit --working-dir . -- python -m jobs.pretrain --config base ...``.
The last line printed is the checkpoint directory (``ankh.load(that_dir)`` loads it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

PRESETS_DIR = Path(__file__).resolve().parent / "configs"


def _flags(ap) -> None:
    ap.add_argument("--output", help="storage path for runs: local dir or gs://bucket/prefix "
                    "(default outputs/pretrain)")
    ap.add_argument("--name", help="run name (same name + output = resume)")
    ap.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    ap.add_argument("--in-process", action="store_true",
                    help="run the loop in this process without Ray (one JAX process; debugging)")


def parse(argv: list[str] | None = None):
    from ankh_platform.core.config import parse_cli
    from ankh_platform.train.job import PretrainConfig

    presets = PRESETS_DIR
    # parse_cli names presets by file stem; accept "--config tiny" for pretrain-tiny.yaml too.
    argv = list(argv or [])
    if "--config" in argv:
        i = argv.index("--config") + 1
        if i < len(argv) and not Path(argv[i]).exists() and (presets / f"pretrain-{argv[i]}.yaml").exists():
            argv[i] = f"pretrain-{argv[i]}"
    cfg, args = parse_cli(PretrainConfig, argv, __doc__, presets_dir=presets, extra=_flags)
    over = {k: v for k, v in (("output", args.output), ("name", args.name)) if v}
    return dataclasses.replace(cfg, **over), args


def main(argv: list[str] | None = None) -> dict:
    import sys

    cfg, args = parse(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from ankh_platform.train import job as train

    summary = train.run_local_process(cfg) if args.in_process else train.run(cfg, args.address)
    ckpt = summary["checkpoint_dir"]
    print(json.dumps({k: summary.get(k) for k in ("step", "val_loss", "val_residue_loss", "run_dir")}))
    print(f"embed:  python -c \"import ankh; print(ankh.load('{ckpt}').embed(['MKTAYIAKQR']).shape)\"")
    print(f"serve:  python -m jobs.serve --checkpoint {ckpt}")
    print(f"export: python -m jobs.export {ckpt} OUT_HF_DIR")
    print(ckpt)
    return summary


if __name__ == "__main__":
    main()
