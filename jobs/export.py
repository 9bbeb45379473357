"""Export a pretraining checkpoint to a Hugging Face T5 directory.

    python -m jobs.export RUN_OR_CHECKPOINT_DIR OUT_DIR

RUN_OR_CHECKPOINT_DIR is a run dir (newest good checkpoint is used), its ``checkpoints/`` dir or
one ``checkpoints/<step>`` dir, local or gs://. OUT_DIR gets config.json, model.safetensors and
tokenizer.json, loadable by ``ankh.load`` and ``transformers.T5ForConditionalGeneration``.
"""

from __future__ import annotations

import argparse
import logging


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="run dir, its checkpoints/ dir, or a checkpoints/<step> dir")
    ap.add_argument("out", help="output HF directory (local or gs://)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from ankh_platform.train.checkpoints import export_hf

    out = export_hf(args.checkpoint, args.out)
    print(out)
    return out


if __name__ == "__main__":
    main()
