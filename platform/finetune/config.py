"""``jobs.finetune``'s settings: what to tune (``mode``), the adapter, the head, the schedule."""

from __future__ import annotations

import dataclasses
from typing import Literal

from ankh.lora import LoraConfig
from ankh_platform.evaluate.tasks import TaskLimits
from ankh_platform.train.config import MeshConfig, ScaleConfig

MODES = ("head", "lora", "full")


@dataclasses.dataclass(frozen=True)
class FinetuneJobConfig:
    """``mode``: ``head`` trains the head on the frozen encoder; ``lora`` the head and LoRA
    adapters on the encoder's attention (``lora.*``); ``full`` the head and every encoder weight.
    Learning rate 3e-4 with AdamW, as Schmirler et al. 2024 fine-tuned Ankh."""

    model: str = "tiny"  # preset, HF directory, our run or hub id (its encoder is loaded)
    task: str = "ss3"  # a jobs.evaluate task spec, or go_mf
    output: str = "outputs/finetune"
    mode: Literal["head", "lora", "full"] = "lora"
    head: Literal["linear", "mlp", "convbert"] = "linear"
    lora: LoraConfig = LoraConfig()
    steps: int = 1000  # optimizer steps at most (early stopping may end sooner)
    batch_size: int = 8  # sequences per step
    learning_rate: float = 3e-4
    warmup_steps: int = 0
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    eval_every: int = 100  # steps between validation passes (and checkpoints)
    patience: int = 5  # validation passes without a better metric before stopping; 0 = never
    class_weights: Literal["none", "balanced"] = "none"  # balanced: inverse class frequency
    go_top_n: int = 20
    seed: int = 0
    limits: TaskLimits = TaskLimits()
    # The encoder's compute dtype (parameters and optimizer state stay float32); auto:
    # bfloat16 on GPU/TPU, float32 on CPU (``ankh.load``)
    compute_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # Recompute each encoder block's activations in the backward pass instead of keeping them
    # (pretraining's ``optim.remat``, ``ankh.model.block_call``): longer sequences or bigger
    # batches in the same memory, for about a third more compute per step
    remat: bool = False
    # Ray Train data parallel (platform/finetune/distributed.py): num_workers > 1 (or GPU/TPU
    # workers) splits each global batch of batch_size rows over the workers; 1 CPU worker runs
    # in this process, without Ray.
    scale: ScaleConfig = ScaleConfig()
    # The device mesh over every worker's devices, as jobs.pretrain's (mesh.fsdp=4
    # mesh.tensor=2; data = the devices left over): parameters, gradients and optimizer state
    # sharded by ankh.sharding's rules, each batch split over data x fsdp (batch_size must
    # divide by it: checked where the mesh is built, distributed.mesh). The default (all data)
    # in one process trains on one device.
    mesh: MeshConfig = MeshConfig()
    max_failures: int = 0  # Ray Train restarts of the workers (they resume from a checkpoint)
    compile_cache: str = ""  # persistent XLA compilation cache directory ("" = none)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.steps < 1 or self.batch_size < 1 or self.eval_every < 1:
            raise ValueError("steps, batch_size and eval_every must be >= 1")
        if self.patience < 0:
            raise ValueError(f"patience must be >= 0, got {self.patience}")
        if self.compute_dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(
                f"compute_dtype must be auto, float32 or bfloat16, got {self.compute_dtype!r}"
            )
        if self.class_weights not in ("none", "balanced"):
            raise ValueError(f"class_weights must be none or balanced, got {self.class_weights!r}")
