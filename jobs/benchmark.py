"""Benchmarks, one JSON line each: ``python -m jobs.benchmark <what> [options]``.

Each subcommand lives in ``platform/bench/<what>.py`` (``ankh_platform.bench.<what>``) with a
``main(argv)`` that prints one JSON object; ``--help`` after the subcommand lists its flags.
"""

import importlib
import sys

from ankh_platform.core import cli as _cli
from ankh_platform.core.config import ConfigError

SUBCOMMANDS = {
    "embed": "encoder throughput vs HF PyTorch T5 on the same weights",
    "data": "data pipeline tokens/s and padding waste",
    "train": "train step tokens/s, MFU, data-wait fraction",
    "generate": "decoded tokens/s vs HF generate",
    "serve": "requests/s and latency under concurrent load vs offline throughput",
    "embed-job": "batch-embedding job tokens/s vs raw encoder, padding waste",
    "fasta": "a real FASTA through jobs.embed (command line, Ray start included) vs HF T5EncoderModel",
    "packed": "packed rows' attention (within each protein vs masked vs one per row), model time",
    "context": "how much of a residue its neighbours predict (count models): the local-context floor",
    "learn": "what pretraining reaches in a wall-clock budget: held-out loss vs unigram, probes vs baselines",
    "finetune": "LoRA vs full fine-tuning: step time, peak memory, trainable vs total parameters",
    "preempt": "time from SIGTERM to a saved checkpoint (in-process run, stream source)",
    "search": "index recall@10, latency and memory vs exact search; GO transfer vs MMseqs2",
    "device": "the accelerator suite (embed, train MFU, generate, embed-job) in <= 8 min",
}


def main(argv: list[str] | None = None) -> None:
    """Dispatch to a subcommand; its own parser (in ``ankh_platform.bench``) reads the rest."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        for name, what in SUBCOMMANDS.items():
            print(f"  {name:10s} {what}")
        return
    if not argv or argv[0] not in SUBCOMMANDS:
        what = f"unknown benchmark {argv[0]!r}" if argv else "which benchmark?"
        raise ConfigError(f"{what}; one of: {', '.join(SUBCOMMANDS)} (see --help)")
    mod = importlib.import_module(f"ankh_platform.bench.{argv[0].replace('-', '_')}")
    mod.main(argv[1:])


if __name__ == "__main__":
    sys.exit(_cli.run(main))
