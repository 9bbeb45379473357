"""The pretraining run's configuration, and the one place its relative paths become absolute.

``python -m jobs.pretrain`` parses argv into a :class:`PretrainConfig` once (YAML presets in
``jobs/configs/`` + dotted overrides, ``ankh_platform.core.config``); the driver calls
:func:`resolve_paths` once; workers receive that config (as the JSON-able dict Ray Train shows
in its dashboard, rebuilt by one ``from_dict``).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Literal

from ankh import storage
from ankh.config import PRESETS, AnkhConfig
from ankh.training import OptimConfig, check_freeze
from ankh_platform.core.config import ConfigError
from ankh_platform.core.samples import bundled_train, bundled_validation, repo_path, shared_path
from ankh_platform.data.pipeline import DataConfig


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    data: int = -1  # -1 = all remaining devices
    fsdp: int = 1
    tensor: int = 1


@dataclasses.dataclass(frozen=True)
class ScaleConfig:
    # Ray Train workers = JAX processes (TPU: one per host). A range ``min,max`` (or [min, max])
    # makes the run elastic: it starts, and after losing hosts restarts, with as many workers as
    # the cluster has (>= min) and grows back to max as hosts return. Read back as an int: the
    # max, with the min in ``min_workers``.
    num_workers: int | str | tuple[int, ...] = 1
    min_workers: int = 0  # 0 = num_workers (a fixed worker count)
    # Elastic runs: how often a healthy group checks for returned hosts to grow onto (Ray
    # Train's elastic_resize_monitor_interval_s); growing restarts from the newest checkpoint.
    resize_interval_s: float = 60.0
    # Extra Ray resources per worker (e.g. {host_slot: 1}: a custom resource that each host
    # offers once, so Ray places at most one worker per host -- what a TPU host does by itself).
    # An elastic run grows back only onto hosts that offer every one of them.
    resources: dict = dataclasses.field(default_factory=dict)
    cpus_per_worker: float = 1.0
    devices_per_worker: int = 1  # CPU only: simulated JAX devices per process
    use_tpu: bool = False
    use_gpu: bool = False
    topology: str = ""  # TPU, e.g. "2x2x2" for a v4-16
    accelerator_type: str = "TPU-V4"

    def __post_init__(self) -> None:
        lo, hi = _worker_range(self.num_workers, self.min_workers)
        object.__setattr__(self, "num_workers", hi)  # frozen: normalised once, here
        object.__setattr__(self, "min_workers", 0 if lo == hi else lo)  # 0 = fixed, as given
        if self.resize_interval_s < 0:
            raise ConfigError(f"scale.resize_interval_s={self.resize_interval_s}: must be >= 0")

    @property
    def elastic(self) -> bool:
        return 0 < self.min_workers < self.num_workers

    @property
    def worker_range(self) -> tuple[int, int]:
        return self.min_workers or self.num_workers, self.num_workers


def _worker_range(value: Any, min_workers: int) -> tuple[int, int]:
    """``(min, max)`` from ``scale.num_workers`` (``2``, ``"1,2"``, ``[1, 2]``) and
    ``scale.min_workers`` (0 = the max); a clear error for anything else."""
    where = f"scale.num_workers={value!r}"
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
        if not all(p.isdigit() for p in parts):
            raise ConfigError(f"{where}: expected N or MIN,MAX (e.g. 2 or 1,2)")
        value = tuple(int(p) for p in parts)
    if isinstance(value, (tuple, list)):
        if len(value) == 1:
            value = value[0]
        elif len(value) == 2:
            if min_workers and min_workers != value[0]:
                raise ConfigError(f"{where} and scale.min_workers={min_workers} disagree")
            min_workers, value = value
        else:
            raise ConfigError(f"{where}: expected N or MIN,MAX")
    lo = min_workers or value
    if not 1 <= lo <= value:
        raise ConfigError(f"{where}: need 1 <= min ({lo}) <= max ({value})")
    return int(lo), int(value)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every: int = 100
    keep: int = 3
    async_save: bool = True
    # On SIGTERM (a TPU maintenance / preemption notice) the loop saves at the current step and
    # stops; the save may take this long before the worker gives up on it (GCE gives >= 30 s).
    preempt_timeout_s: float = 25.0


@dataclasses.dataclass(frozen=True)
class FaultConfig:
    """Fault injection for tests (``train/faults.py``): ``signal`` to worker ``rank`` at
    ``kill_at_step``, once per run (SIGKILL: a crash; SIGTERM: a preemption notice); at each
    step of ``hold_steps`` the loop finishes its saves and waits while ``<run>/hold-<step>``
    exists."""

    kill_at_step: int = -1
    rank: int = 0
    signal: Literal["SIGKILL", "SIGTERM"] = "SIGKILL"
    hold_steps: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    """Where a worker's batches come from (``ankh_platform.train.source``)."""

    kind: Literal["stream", "local"] = "stream"
    eval_paths: tuple[str, ...] = ("data/uniprot_sample/validation",)
    eval_batches: int = 4  # held-out batches per host for the validation loss (fixed set)
    # Held-out batches masked at this probability instead of data.mask_prob (0 = the run's own):
    # one fixed held-out objective, so runs trained with different masking (an ablation's
    # mask-prob group) are scored on the same targets with the same context.
    eval_mask_prob: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.eval_mask_prob < 1.0:
            raise ConfigError(
                f"source.eval_mask_prob={self.eval_mask_prob}: must be in [0, 1) "
                "(0 = the run's data.mask_prob)"
            )


def eval_masking_note(data: Any, src: SourceConfig) -> str | None:
    """Why a run's held-out loss at ``source.eval_mask_prob`` may not mean what it seems: a model
    trained at a lower masking rate has never seen the higher sentinel ids (``<extra_id_k>``,
    one per masked residue) the held-out batches use. Measured (docs/ablation.md, the masking
    study): a model trained at 10 % scores 2.87 nats at its own rate and 5.3 at 15 %."""
    if src.eval_mask_prob > data.mask_prob:
        return (
            f"held-out batches masked at {src.eval_mask_prob:g}, training at {data.mask_prob:g}: "
            "they use sentinel ids this model never sees in training, so its held-out loss "
            "measures that too (docs/ablation.md, the masking study)"
        )
    return None


# Linear-probe tasks (``eval.probe_tasks``) -> the metric each reports (its baselines add
# ``_onehot`` and ``_random_init``). Here, not in train/probe.py, so that specs (ablate.spec) can
# check metric names without importing JAX.
PROBE_METRICS = {"ss3": "ss3_q3", "ss8": "ss8_q8"}


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What every evaluation (each ``eval_every`` steps and the end) measures besides the
    held-out loss: linear probes on frozen per-residue features (``train/probe.py``), one per
    task in ``probe_tasks`` (SS3 Q3, SS8 Q8) on the same fixed PDB chains."""

    probe: bool = True
    probe_tasks: tuple[str, ...] = ("ss3",)  # any of PROBE_METRICS' keys
    probe_train_chains: int = 250  # PDB chains, split by PDB entry (evaluate.tasks.pdb_split)
    probe_test_chains: int = 150
    probe_max_residues: int = 127  # chains cropped: 127 + </s> = 128 tokens, one ladder rung
    probe_steps: int = 100  # L-BFGS iterations of the logistic regression (fixed)
    probe_l2: float = 1e-3  # on standardised features
    baselines: bool = True  # one-hot and random-init (seed + 1) scores, once per run
    curves: bool = True  # <run>/curves.png at the end

    def __post_init__(self) -> None:
        allowed = ", ".join(PROBE_METRICS)
        for t in self.probe_tasks:
            if t not in PROBE_METRICS:
                raise ConfigError(f"eval.probe_tasks: unknown task {t!r} (allowed: {allowed})")
        if len(set(self.probe_tasks)) < len(self.probe_tasks):
            raise ConfigError(f"eval.probe_tasks: repeated task in {list(self.probe_tasks)}")
        if self.probe and not self.probe_tasks:
            raise ConfigError(
                f"eval.probe_tasks is empty but eval.probe is true: name one or more "
                f"of {allowed} (or set eval.probe=false)"
            )
        if (
            self.probe
            and min(
                self.probe_train_chains,
                self.probe_test_chains,
                self.probe_max_residues,
                self.probe_steps,
            )
            < 1
        ):
            raise ConfigError(
                "eval.probe_train_chains, probe_test_chains, probe_max_residues and "
                "probe_steps must be >= 1 (or eval.probe=false)"
            )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Which parts of the network train (``ankh.training.FREEZE_GROUPS``): e.g.
    ``train.freeze=[encoder]`` adapts only the decoder, as the High-N generation fine-tune."""

    freeze: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        try:
            check_freeze(self.freeze)
        except ValueError as e:
            raise ConfigError(f"freeze: {e}") from None


# optim.peak_lr when the run does not set it. Fresh weights: the tiny preset's tuned peak.
# Weights to continue from (model= an HF dir, a run, gs://, a hub id): with Adafactor unscaled
# (multiply_by_parameter_scale=False) every step moves each weight by about the LR whatever its
# gradient's size, so at 0.004 the moves add up to the weights' own size (mean |w| 0.03-0.1 in
# the tiny shape's init) within tens of steps and overwrite what the source knows; 1e-4 is 40x
# gentler: it keeps the source (tests/train/test_continue.py) yet adapts over thousands of steps.
FRESH_PEAK_LR = 0.004
CONTINUED_PEAK_LR = 1e-4


DEFAULT_DATA = DataConfig(
    paths=("data/uniprot_sample/train",),
    rows=8,
    enc_len=264,
    max_residues=128,
    max_segments=8,
    window=512,
)
# The stream's packing settings. The local source has no packing: one sequence per row, padded
# to data.max_residues + 1 tokens, and a global shuffle per epoch -- so a value other than the
# default would silently do nothing there, and is refused instead.
STREAM_ONLY = ("enc_len", "dec_len", "max_segments", "window")


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    # A preset (fresh weights) or weights to continue from: an HF Ankh directory, one of our
    # runs/checkpoints, local or gs://, or a hub id (ankh.resolve). Same config and tokenizer.
    model: str = "tiny"
    # A preset's shape changed field by field (AnkhConfig fields, e.g. {num_layers: 3, d_ff: 152}):
    # the ablation sweep's architecture trials (jobs.ablate). Presets only: weights fix their shape.
    model_overrides: dict = dataclasses.field(default_factory=dict)
    steps: int = 300
    seed: int = 0
    output: str = "outputs/pretrain"  # storage path: local dir or gs://bucket/prefix
    name: str = "ankh-tiny"  # run name; same name + output = resume
    # peak_lr None: FRESH_PEAK_LR or CONTINUED_PEAK_LR (effective_optim); total_steps 0 = steps
    optim: OptimConfig = OptimConfig(peak_lr=None, warmup_steps=30, total_steps=0)
    train: TrainConfig = TrainConfig()
    data: DataConfig = DEFAULT_DATA
    source: SourceConfig = SourceConfig()
    mesh: MeshConfig = MeshConfig()
    scale: ScaleConfig = ScaleConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    log_every: int = 10
    eval_every: int = 100  # 0 = only at the end
    eval: EvalConfig = EvalConfig()  # the linear probes, baselines, curves.png
    max_failures: int = 3
    log_example_ids: bool = False  # <run>/examples/rank<r>.jsonl (exactly-once checks)
    fault: FaultConfig = FaultConfig()
    compile_cache: str = "~/.cache/ankh/jax"  # persistent XLA cache ("" = off): fast restarts

    def __post_init__(self) -> None:
        if self.model_overrides:
            model_shape(self)  # a ConfigError now, not in a worker
        try:
            self.data.objective_config()  # e.g. mlm with span masking: refused here
        except ValueError as e:
            raise ConfigError(f"data: {e}") from None
        if self.source.kind != "local":
            return
        for name in STREAM_ONLY:
            value, default = getattr(self.data, name), getattr(DEFAULT_DATA, name)
            if value != default:
                raise ConfigError(
                    f"data.{name}={value} does nothing with source.kind=local (one sequence per "
                    f"row of data.max_residues + 1 tokens, no packing windows): leave it at "
                    f"{default} or use source.kind=stream"
                )

    def run_dir(self) -> str:
        """``<output>/<name>`` (absolute once :func:`resolve_paths` has run)."""
        return storage.join(self.output, self.name)


def model_shape(cfg: PretrainConfig, config: AnkhConfig | None = None) -> AnkhConfig:
    """The network ``cfg`` trains: ``config`` (what ``cfg.model`` resolved to; default: the
    preset) with ``cfg.model_overrides`` applied. The one place they are applied."""
    if not cfg.model_overrides:
        return config if config is not None else PRESETS[cfg.model]
    if cfg.model not in PRESETS:
        raise ConfigError(
            f"model_overrides need a preset model (one of {', '.join(PRESETS)}); "
            f"model={cfg.model!r} names weights, whose shape is fixed (a preset file's "
            f"model_overrides are dropped with model_overrides={{}})"
        )
    fields = {f.name for f in dataclasses.fields(AnkhConfig)}
    unknown = sorted(set(cfg.model_overrides) - fields)
    if unknown:
        raise ConfigError(f"model_overrides: unknown AnkhConfig field(s) {unknown}")
    try:
        return dataclasses.replace(config or PRESETS[cfg.model], **cfg.model_overrides)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model_overrides: {e}") from None


def effective_optim(cfg: PretrainConfig, from_weights: bool) -> OptimConfig:
    """The run's optimizer settings: an unset ``peak_lr`` by where the weights come from, and
    ``total_steps`` 0 as the run's ``steps`` (decay over the whole run). The one place."""
    oc = cfg.optim
    if oc.peak_lr is None:
        oc = dataclasses.replace(oc, peak_lr=CONTINUED_PEAK_LR if from_weights else FRESH_PEAK_LR)
    if oc.total_steps == 0:
        oc = dataclasses.replace(oc, total_steps=cfg.steps)
    return oc


def _model_ref(ref: str) -> str:
    """A local model path made absolute (workers may start elsewhere); presets, hub ids and
    URLs as given."""
    if ref in PRESETS or "://" in ref or not os.path.exists(ref):
        return ref
    return storage.norm_path(ref)


def _absolute(path: str, fallback: Path) -> str:
    """A path as every worker can open it: URLs as given, local paths absolute (a relative one
    from the working directory, else beside the bundled sample: the defaults); ``shared:REL``
    from the data directory, else ``fallback`` (``samples.shared_path``)."""
    return storage.norm_path(repo_path(shared_path(path, fallback)))


def resolve_paths(cfg: PretrainConfig) -> PretrainConfig:
    """Every local path of ``cfg`` made absolute, on the driver: workers may run elsewhere."""
    return dataclasses.replace(
        cfg,
        output=storage.norm_path(cfg.output),
        model=_model_ref(cfg.model),
        data=dataclasses.replace(
            cfg.data, paths=tuple(_absolute(p, bundled_train()) for p in cfg.data.paths)
        ),
        source=dataclasses.replace(
            cfg.source,
            eval_paths=tuple(_absolute(p, bundled_validation()) for p in cfg.source.eval_paths),
        ),
    )
