"""The ablation sweep spec and each trial's pretraining config.

A spec (``jobs/configs/ablate-*.yaml``) is a base ``PretrainConfig`` (a nested mapping, as the
``jobs.pretrain`` presets), a budget every trial trains for, the metric that picks each group's
winner, and an ordered list of groups, each one variable (a dotted ``PretrainConfig`` key, e.g.
``data.mask_prob`` or ``model_overrides.num_layers``; a mapping value sets several keys at once)
and its values. Group ``k``'s trials are the base plus the winners of groups ``< k`` plus their
own value; a group that names ``solve`` gets that model dimension solved per trial so the
trial's parameter count is within ``param_tolerance`` of the base's.

``plan_group`` is the one place a trial's config is built; ``validate`` builds every trial of
every group under every combination of possible earlier winners (param counts are analytic,
so this is cheap) and so refuses a spec any of whose trials cannot be solved, before anything
trains.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from typing import Any, Literal

from ankh.config import PRESETS, AnkhConfig
from ankh_platform.ablate.params import SOLVABLE, SolveError, param_count, solve, within
from ankh_platform.core.config import ConfigError, from_dict, nest, to_dict
from ankh_platform.train.config import PROBE_METRICS, PretrainConfig, eval_masking_note, model_shape

log = logging.getLogger(__name__)

# Keys a group may not vary: they are the equal budget, seed and data order of every trial, or
# the sweep's own bookkeeping.
FIXED = ("steps", "seed", "data.seed", "name", "output", "optim.total_steps")
MAX_PLANS = 20_000  # group plans validate() makes (each under one set of earlier winners)


@dataclasses.dataclass(frozen=True)
class Budget:
    """What every trial trains for: ``steps``, or ``tokens`` (encoder token slots, all workers:
    steps = ceil(tokens / (rows x workers x encoder tokens per row)))."""

    steps: int = 0
    tokens: int = 0


@dataclasses.dataclass(frozen=True)
class SelectBy:
    metric: str = "val_residue_loss"
    mode: Literal["min", "max", ""] = ""  # "" = min for a *loss* metric, else max

    def best(self) -> str:
        return self.mode or ("min" if "loss" in self.metric else "max")


@dataclasses.dataclass(frozen=True)
class Group:
    name: str = ""
    variable: str = ""  # dotted PretrainConfig key
    values: tuple[Any, ...] = ()
    solve: str = ""  # model dimension solved per trial (e.g. d_ff, d_model)


@dataclasses.dataclass(frozen=True)
class AblateConfig:
    name: str = "ablate"
    output: str = "outputs/ablate"  # the sweep dir is <output>/<name> (local or a shared mount)
    runs: str = ""  # where trials' pretraining runs go ("" = <sweep>/runs; gs:// ok)
    base: dict = dataclasses.field(default_factory=dict)  # a PretrainConfig, nested mapping
    budget: Budget = Budget()
    select_by: SelectBy = SelectBy()
    # what each trial must report (from the pretraining run's final summary)
    metrics: tuple[str, ...] = ("val_residue_loss", "val_loss", "ss3_q3")
    param_tolerance: float = 0.02
    multiple_of: int = 8  # solved widths are multiples of this
    max_concurrent_trials: int = 1
    cpus_per_trial: float = 1.0  # a one-process trial's CPUs (a Ray Train trial holds none)
    groups: tuple[Group, ...] = ()


@dataclasses.dataclass(frozen=True)
class Trial:
    id: str  # also the pretraining run's name
    group: int
    value: Any
    label: str  # the value as the tables show it
    changes: dict[str, Any]  # dotted key -> value on top of the base (winners included)
    config: PretrainConfig
    params: int

    def record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "group": self.group,
            "value": self.value,
            "label": self.label,
            "changes": self.changes,
            "params": self.params,
            "config": to_dict(self.config),
        }


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists and scalars are leaves)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out |= flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def label(value: Any) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}={label(v)}" for k, v in flatten(value).items())
    if isinstance(value, (list, tuple)):
        return "+".join(map(label, value))
    return str(value).lower() if isinstance(value, bool) else str(value)


def model_config(cfg: PretrainConfig) -> AnkhConfig:
    """The network a pretraining config trains (a preset with its ``model_overrides``)."""
    if cfg.model not in PRESETS:
        raise ConfigError(
            f"base.model={cfg.model!r}: an ablation needs a preset "
            f"({', '.join(PRESETS)}) so trials can change its shape and count it"
        )
    return model_shape(cfg)


def budget_steps(spec: AblateConfig, cfg: PretrainConfig) -> int:
    b = spec.budget
    if (b.steps > 0) == (b.tokens > 0):
        raise ConfigError(f"budget: set exactly one of steps and tokens (got {b})")
    if b.steps:
        return b.steps
    per_row = cfg.data.max_residues + 1 if cfg.source.kind == "local" else cfg.data.enc_len
    return math.ceil(b.tokens / (cfg.data.rows * cfg.scale.num_workers * per_row))


def pretrain_config(
    spec: AblateConfig, changes: dict[str, Any], name: str, runs_dir: str
) -> PretrainConfig:
    """The base with ``changes`` (dotted keys; mapping values merge), as run ``name``."""
    flat = flatten(spec.base) | flatten(nest(changes)) | {"name": name, "output": runs_dir}
    try:
        cfg = from_dict(PretrainConfig, nest(flat))
    except (ConfigError, TypeError, ValueError) as e:
        raise ConfigError(f"trial {name} ({label(changes) or 'base'}): {e}") from None
    return dataclasses.replace(cfg, steps=budget_steps(spec, cfg))


def plan_group(
    spec: AblateConfig, k: int, carried: dict[str, Any], runs_dir: str = "runs"
) -> list[Trial]:
    """Group ``k``'s trials on top of ``carried`` (the earlier winners' changes)."""
    group = spec.groups[k]
    target = param_count(model_config(pretrain_config(spec, {}, "base", runs_dir)))
    slug = re.sub(r"[^A-Za-z0-9]+", "-", group.name).strip("-").lower() or "group"
    trials = []
    for i, value in enumerate(group.values):
        tid = f"g{k}-{slug}-{i}"
        # dotted leaves, so a mapping value adds to (not replaces) what earlier winners set
        changes = dict(carried) | flatten(nest({group.variable: value}))
        cfg = pretrain_config(spec, changes, tid, runs_dir)
        shape = model_config(cfg)
        if group.solve:
            try:
                shape, _ = solve(shape, group.solve, target, spec.param_tolerance, spec.multiple_of)
            except SolveError as e:
                raise ConfigError(
                    f"group {group.name!r}, {group.variable}={label(value)}: {e}"
                ) from None
            changes[f"model_overrides.{group.solve}"] = getattr(shape, group.solve)
            cfg = pretrain_config(spec, changes, tid, runs_dir)
        n = param_count(shape)
        if not within(n, target, spec.param_tolerance):
            raise ConfigError(
                f"group {group.name!r}, {group.variable}={label(value)}: {n:,} parameters vs the "
                f"base's {target:,} ({(n - target) / target:+.1%}, tolerance "
                f"{spec.param_tolerance:.0%}); name a dimension to `solve` for this group"
            )
        trials.append(Trial(tid, k, value, label(value), changes, cfg, n))
    return trials


def _check_group(spec: AblateConfig, k: int, group: Group) -> None:
    where = f"groups[{k}] ({group.name or 'unnamed'})"
    if not group.name or not group.variable:
        raise ConfigError(f"{where}: name and variable are required")
    if len(group.values) < 2:
        raise ConfigError(f"{where}: a group compares values -- give at least two")
    if len({json.dumps(v, sort_keys=True) for v in group.values}) < len(group.values):
        raise ConfigError(f"{where}: repeated values {list(group.values)}")
    if group.variable in FIXED or group.variable.startswith(("name.", "output.")):
        raise ConfigError(
            f"{where}: {group.variable} is fixed across a sweep "
            "(budget, seed and data order are equal for every trial)"
        )
    if group.solve and group.solve not in SOLVABLE:
        raise ConfigError(f"{where}: solve={group.solve!r}: one of {', '.join(SOLVABLE)}")
    if group.solve and any(
        f"model_overrides.{group.solve}" in flatten(nest({group.variable: v})) for v in group.values
    ):
        raise ConfigError(f"{where}: solve={group.solve} is the variable itself")


def validate(spec: AblateConfig) -> list[list[Trial]]:
    """Every check a spec gets before anything trains -- every trial of every group solved
    under every earlier winner it could get; returns each group's trials under the earlier
    groups' first values (the first group's are the real ones). Raises ConfigError."""
    if not spec.groups:
        raise ConfigError("groups: at least one group is required")
    if len({g.name for g in spec.groups}) < len(spec.groups):
        raise ConfigError(f"groups: names must be unique, got {[g.name for g in spec.groups]}")
    if spec.select_by.metric not in spec.metrics:
        raise ConfigError(
            f"select_by.metric={spec.select_by.metric!r} is not among metrics {list(spec.metrics)}"
        )
    if not 0 < spec.param_tolerance < 1 or spec.max_concurrent_trials < 1 or spec.multiple_of < 1:
        raise ConfigError(
            "param_tolerance must be in (0, 1), max_concurrent_trials and multiple_of >= 1"
        )
    for k, g in enumerate(spec.groups):
        _check_group(spec, k, g)
    base = pretrain_config(spec, {}, "base", "runs")
    model_config(base)  # the base itself is valid
    _check_probe_metrics(spec, base)
    first: list[list[Trial]] = []
    _walk(spec, 0, {}, first, [0])
    for t in (t for group in first for t in group):
        if note := eval_masking_note(t.config.data, t.config.source):
            log.warning("trial %s (%s): %s", t.id, t.label, note)
    return first


def _check_probe_metrics(spec: AblateConfig, base: PretrainConfig) -> None:
    """Refuse a probe metric (``ss3_q3``, ``ss8_q8``, or a baseline of one) that the base's
    in-training evaluation would not produce: a trial would otherwise train to the end and only
    then fail for want of it."""
    names = [spec.select_by.metric, *spec.metrics]
    for task, metric in PROBE_METRICS.items():
        asked = next((m for m in names if m == metric or m.startswith(metric + "_")), None)
        if asked is None:
            continue
        if not base.eval.probe:
            raise ConfigError(
                f"metrics lists {asked} but base.eval.probe is false: the runs would not measure it"
            )
        if task not in base.eval.probe_tasks:
            tasks = sorted(set(base.eval.probe_tasks) | {task}, key=list(PROBE_METRICS).index)
            raise ConfigError(
                f"metrics lists {asked} but base.eval.probe_tasks is "
                f"[{', '.join(base.eval.probe_tasks)}]: the runs would not measure "
                f"it; set base.eval.probe_tasks: [{', '.join(tasks)}]"
            )
        if asked != metric and not base.eval.baselines:
            raise ConfigError(f"metrics lists {asked} but base.eval.baselines is false")


def _walk(
    spec: AblateConfig,
    k: int,
    carried: dict[str, Any],
    first: list[list[Trial]] | None,
    budget: list[int],
) -> None:
    """Plan group ``k`` under ``carried``, then every later group under each trial of it that
    could win (groups that change the model: all; others: the first, as they leave the count
    alone). ``first`` collects the groups' trials along the first values."""
    budget[0] += 1
    if budget[0] > MAX_PLANS:
        raise ConfigError(f"more than {MAX_PLANS:,} combinations of earlier winners to validate")
    trials = plan_group(spec, k, carried)
    if first is not None:
        first.append(trials)
    if k + 1 == len(spec.groups):
        return
    g = spec.groups[k]
    shaped = bool(g.solve) or g.variable.startswith("model")
    for i, t in enumerate(trials if shaped else trials[:1]):
        _walk(spec, k + 1, t.changes, first if i == 0 else None, budget)
