"""Convert between HF Ankh directories and this platform's models.

    python -m jobs.convert export --model RUN_OR_CHECKPOINT_OR_PRESET --output HF_DIR
        write config.json + model.safetensors + tokenizer.json, loadable by
        transformers.T5ForConditionalGeneration.from_pretrained(HF_DIR)
    python -m jobs.convert import --model HF_DIR_OR_HUB_ID --output OUT
        read an HF Ankh directory or hub id (model.safetensors; pytorch_model.bin only via torch
        with weights_only=True) and write its weights as one of our checkpoints, OUT/checkpoints/0
        (ankh.load(OUT) and jobs.serve/embed --model OUT read it). The checkpoint keeps the
        config, not tokenizer.json: a model with its own vocabulary (ankh3) keeps it only as an
        HF directory. Pretraining does not need this step: jobs.pretrain --model HF_DIR continues
        from an HF directory directly, with its tokenizer.
    python -m jobs.convert check --model HF_DIR_OR_HUB_ID
        load, export to a temp dir, load that again: verifies the HF round trip is bit-exact

Paths may be local or gs://. ``--hf`` (import, check) is the old spelling of ``--model``.
"""

import sys
import tempfile

import numpy as np

from ankh_platform.core import cli as _cli


def main(argv: list[str] | None = None) -> int:
    ap = _cli.parser("jobs.convert", __doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="our model -> HF directory")
    _cli.add(ex, "--model", _cli.model_flag(None, required=True))
    _cli.add(ex, "--output", _cli.output_flag(None, "the HF directory", required=True))
    hf_only = "an HF directory or hub id (a preset has no weights)"
    im = sub.add_parser("import", help="HF directory -> our checkpoint")
    _cli.add(im, "--model", _cli.model_flag(None, hf_only, required=True, aliases=("--hf",)))
    _cli.add(im, "--output", _cli.output_flag(None, "our checkpoint", required=True))
    ck = sub.add_parser("check", help="verify an HF directory round-trips bit-exactly")
    _cli.add(ck, "--model", _cli.model_flag(None, hf_only, required=True, aliases=("--hf",)))
    args = _cli.parse_args(ap, argv)

    import ankh

    if args.cmd in ("import", "check"):
        from ankh.resolve import resolve

        if resolve(args.model).kind != "hf":  # a preset would "import" random weights
            raise ValueError(
                f"--model {args.model}: not an HF Ankh directory or hub id (a preset has no weights)"
            )
    if args.cmd == "export":
        ankh.load(args.model).save_hf(args.output)
        print(f"wrote HF directory {args.output}")
    elif args.cmd == "import":
        from ankh.checkpoint import save_model

        model = ankh.load(args.model)
        save_model(model, args.output)
        print(f"wrote checkpoint {args.output}")
    else:
        model = ankh.load(args.model)
        with tempfile.TemporaryDirectory() as tmp:
            model.save_hf(tmp)
            again = ankh.load(tmp).flat_params()
        bad = [p for p, w in model.flat_params().items() if not np.array_equal(again[p], w)]
        if bad:
            print(f"round trip differs in {len(bad)} tensors, e.g. {bad[:3]}", file=sys.stderr)
            return 1
        print(f"round trip bit-exact: {len(again)} tensors, {model.num_params():,} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(_cli.run(main))
