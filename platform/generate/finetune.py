"""High-N: fine-tune the decoder (encoder frozen) on a protein family, then save the model.

Reads the family from Parquet (``sequence`` column) or FASTA[.gz] (local or gs://), trains with
``ankh.finetune`` (Ankh's pretraining objective, loss and optimizer; decoder + lm_head only) and
writes ``<output>/model/`` (HF directory: ``ankh.load`` / ``jobs.generate model=...`` read it)
and ``<output>/history.json`` (train loss per step, held-out mean log-likelihood over time).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

from ankh import storage
from ankh.finetune import FinetuneConfig
from ankh_platform.core import progress

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FinetuneJobConfig:
    model: str = "tiny"  # preset, HF directory or our pretraining checkpoint
    data: str = ""  # family: Parquet or FASTA[.gz]
    output: str = ""
    max_sequences: int = 100_000
    train: FinetuneConfig = FinetuneConfig()


def run(cfg: FinetuneJobConfig) -> dict[str, Any]:
    import ankh
    from ankh.finetune import finetune_decoder
    from ankh_platform.generate.variants import read_sequences

    if not cfg.data or not cfg.output:
        raise ValueError("data=PATH and output=DIR are required")
    family = [s.strip().upper() for _, s in read_sequences(cfg.data, cfg.max_sequences)]
    log.info("family: %d sequences from %s", len(family), cfg.data)
    model = ankh.load(cfg.model)
    with progress.Progress("finetune", total=cfg.train.steps, unit="steps") as bar:
        tuned, hist = finetune_decoder(model, family, cfg.train, callback=lambda *_: bar.update())
    out = cfg.output.rstrip("/")
    fs, root = storage.filesystem(out)
    fs.makedirs(root, exist_ok=True)
    if storage.is_local(fs):
        tuned.save_hf(f"{root}/model")
    else:  # write locally, then upload (save_hf writes a local directory)
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            tuned.save_hf(tmp)
            fs.put(tmp, f"{root}/model", recursive=True)
    summary = {
        "model_dir": f"{out}/model",
        "n_train": hist["n_train"],
        "n_eval": hist["n_eval"],
        "steps": cfg.train.steps,
        "eval_mean_log_likelihood": hist["eval"],
        "first_loss": hist["train_loss"][0],
        "last_loss": hist["train_loss"][-1],
    }
    history = summary | {"train_loss": hist["train_loss"]}

    def write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            json.dump(history, fh)

    storage.atomic_write(f"{root}/history.json", write, fs)  # published whole or not at all
    return summary
