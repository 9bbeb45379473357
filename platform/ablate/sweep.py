"""The ablation sweep on Ray Tune: groups in order, each one Tune experiment of its trials.

``run_sweep(spec)`` validates the whole spec (every trial solvable), then for group ``k``:
plans its trials on top of the earlier winners (``spec.plan_group``), records the plan in
``<sweep>/groups/group-<k>.json``, runs the trials as one Tune experiment
``<sweep>/tune/group-<k>`` -- restored when it exists, so finished trials are not re-run and
unfinished ones continue (their pretraining runs resume from their own checkpoints) -- and
records the winner by ``select_by``. Each trial is one pretraining run: in the trial's own
process (``train.job.run_local_process``) when it has one worker, else a Ray Train run
(``train.job.run``) launched from the trial, as on a TPU cluster.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from typing import Any

from ray import tune

from ankh import storage
from ankh_platform.ablate import results
from ankh_platform.ablate.spec import AblateConfig, Trial, plan_group, pretrain_config, validate
from ankh_platform.core import progress
from ankh_platform.core.config import ConfigError, from_dict, to_dict
from ankh_platform.train.config import PretrainConfig, model_shape

log = logging.getLogger(__name__)
STARTS = "ablate-starts.jsonl"  # one line per time a trial's run was started (resume checks)
_printed: set[str] = set()  # trial ids whose line this process printed
_bar: progress.Progress | None = None  # the sweep's trials: a bar on a TTY, else periodic lines


def _trial_done(line: str, tid: str) -> None:
    """A finished trial's console line, counted once on the sweep's progress bar."""
    progress.console(line)
    if tid not in _printed and _bar is not None:
        _bar.update()
    _printed.add(tid)


def sweep_dir(spec: AblateConfig) -> str:
    if "://" in spec.output:
        raise ConfigError(
            f"output={spec.output!r}: the sweep dir is a local path (on a "
            "multi-node cluster a shared mount); `runs` may be gs://"
        )
    return os.path.abspath(os.path.join(os.path.expanduser(spec.output), spec.name))


def train_trial(config: dict[str, Any]) -> None:
    """Tune trainable: one pretraining run, its final metrics reported once."""
    from ankh_platform.train import job

    trial = config["trial"]
    cfg = from_dict(PretrainConfig, trial["config"])
    _count_start(cfg)
    progress.set_quiet(
        True
    )  # the sweep prints one line per trial; the run's own go to metrics.jsonl
    summary = job.run_local_process(cfg) if in_process(cfg) else job.run(cfg)
    if summary.get("preempted"):
        raise RuntimeError(
            f"trial {trial['id']} was preempted at step {summary['step']}; "
            "re-run the sweep to continue it"
        )
    missing = [m for m in trial["metrics"] if summary.get(m) is None]
    if missing:
        raise RuntimeError(
            f"trial {trial['id']}: the pretraining run's final summary has no {missing} "
            f"(it has {sorted(summary)}); ss3_q3 / ss8_q8 come from the run's in-training "
            "linear probes, which the spec's base must switch on (base.eval.probe, "
            "base.eval.probe_tasks) -- or drop the metric from `metrics`"
        )
    tune.report(
        {m: float(summary[m]) for m in trial["metrics"]}
        | {"params": trial["params"], "step": int(summary["step"])}
    )


def in_process(cfg: PretrainConfig) -> bool:
    """One CPU process: the trial trains itself; else it launches a Ray Train run."""
    return cfg.scale.num_workers == 1 and not (cfg.scale.use_tpu or cfg.scale.use_gpu)


def _count_start(cfg: PretrainConfig) -> None:
    fs, run = storage.filesystem(cfg.run_dir())
    fs.makedirs(run, exist_ok=True)
    path = f"{run}/{STARTS}"
    old = fs.cat(path).decode() if fs.exists(path) else ""  # object stores cannot append
    with fs.open(path, "w") as fh:
        fh.write(old + json.dumps({"time": time.time(), "pid": os.getpid()}) + "\n")


class TrialLines(tune.Callback):
    """One console line per finished trial, as it finishes."""

    def __init__(self, metrics: tuple[str, ...]):
        self.metrics = metrics

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        t = trial.config["trial"]
        _trial_done(trial_line(t, trial.last_result or {}, self.metrics), t["id"])


def trial_line(
    t: dict[str, Any], metrics: dict[str, Any], names: tuple[str, ...], note: str = ""
) -> str:
    shown = " | ".join(f"{m} {metrics[m]:.4f}" for m in names if isinstance(metrics.get(m), float))
    return (
        f"trial {t['id']}{note} | {t['variable']}={t['label']} | {t['params']:,} params | {shown}"
    )


def _payload(t: Trial, spec: AblateConfig) -> dict[str, Any]:
    return t.record() | {"variable": spec.groups[t.group].variable, "metrics": list(spec.metrics)}


def _check_plan(path: str, trials: list[Trial]) -> None:
    """A sweep dir belongs to one plan: re-running with a changed spec would restore the old
    experiment under the new name, so it is refused."""
    plan = json.loads(json.dumps([t.record() for t in trials]))
    if os.path.exists(path):
        with open(path) as fh:
            old = json.load(fh)["trials"]
        if old != plan:
            raise ConfigError(
                f"{path} records a different plan for this group (the spec, its "
                "earlier results or the output changed): use another name or output"
            )
        return
    results.write_json(path, {"trials": plan})


def run_group(spec: AblateConfig, k: int, trials: list[Trial], out: str) -> list[dict[str, float]]:
    """Group ``k``'s trials as the Tune experiment ``<out>/tune/group-<k>`` (restored when it
    exists); returns each trial's reported metrics, in ``trials`` order."""
    storage_path, name = os.path.join(out, "tune"), f"group-{k}"
    # A trial that launches a Ray Train run only waits for it: its workers hold the resources
    # (reserving a CPU for the waiting trial too could leave none for them on a small node).
    # Tune refuses an empty request: such a trial asks for one byte of memory instead.
    own = {"cpu": spec.cpus_per_trial} if in_process(trials[0].config) else {"cpu": 0, "memory": 1}
    trainable = tune.with_resources(train_trial, own)
    path = os.path.join(storage_path, name)
    if tune.Tuner.can_restore(path):
        log.info("restoring %s", path)
        tuner = tune.Tuner.restore(path, trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search([_payload(t, spec) for t in trials])},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=spec.max_concurrent_trials,
                reuse_actors=False,
                trial_dirname_creator=lambda tr: tr.config["trial"]["id"],
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage_path,
                verbose=0,
                callbacks=[TrialLines(spec.metrics)],
                failure_config=tune.FailureConfig(max_failures=1),
            ),
        )
    grid = tuner.fit()
    got: dict[str, dict[str, float]] = {}
    for r in grid:
        tid = r.config["trial"]["id"]
        if r.error:
            raise RuntimeError(f"trial {tid} failed: {r.error}") from r.error
        got[tid] = dict(r.metrics or {})
    missing = [t.id for t in trials if t.id not in got]
    if missing:
        raise RuntimeError(f"group {k}: no result for trials {missing} in {path}")
    for t in trials:  # finished in an earlier invocation: no live line was printed
        if t.id not in _printed:
            _trial_done(
                trial_line(_payload(t, spec), got[t.id], spec.metrics, " (earlier run)"), t.id
            )
    return [got[t.id] for t in trials]


def select(spec: AblateConfig, metrics: list[dict[str, float]]) -> int:
    """Index of the winning trial (NaN never wins; ties: the earlier value)."""
    sign = 1.0 if spec.select_by.best() == "min" else -1.0
    key = [
        sign * m[spec.select_by.metric] if not math.isnan(m[spec.select_by.metric]) else math.inf
        for m in metrics
    ]
    return min(range(len(key)), key=lambda i: key[i])


def _start_ray(spec: AblateConfig, out: str, address: str | None) -> None:
    from ankh_platform.core.runtime import init_ray, log_to_file, verbose
    from ankh_platform.train.job import worker_env

    log_path = log_to_file(os.path.join(out, "logs", "job.log"))
    progress.console(
        f"sweep {spec.name}: {sum(len(g.values) for g in spec.groups)} trials in "
        f"{len(spec.groups)} groups; framework logs: {log_path}"
    )
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's status tables: off with verbose=0
    if address or os.environ.get("RAY_ADDRESS"):
        init_ray(address)
        return
    # A local Ray: trial processes get the pretraining workers' environment (JAX platform,
    # compile cache); on a cluster the submitting job's runtime env applies instead.
    env = worker_env(pretrain_config(spec, {}, "base", out))
    init_ray(None, runtime_env={"env_vars": env}, log_to_driver=verbose())


def run_key(t: Trial) -> str:
    """What makes two trials the same run: the config but its name, with the model as the
    shape it trains (``model_overrides`` spelled differently can name one shape)."""
    cfg = dataclasses.replace(t.config, name="", model_overrides={})
    return json.dumps([to_dict(cfg), dataclasses.asdict(model_shape(t.config))], sort_keys=True)


def run_sweep(spec: AblateConfig, address: str | None = None) -> str:
    """Run (or resume) the sweep; returns the sweep dir holding results.{csv,md,json} + PNGs.

    A trial whose run equals an earlier group's trial (typically the first value of a group
    is the winner so far) is not trained again: it takes that trial's run and metrics."""
    validate(spec)  # every trial of every group solvable before anything trains
    out = sweep_dir(spec)
    runs = spec.runs or os.path.join(out, "runs")
    _start_ray(spec, out, address)
    global _bar
    _bar = progress.Progress(
        f"sweep {spec.name}",
        total=sum(len(g.values) for g in spec.groups),
        unit="trials",
        interval=0.0,
    )
    try:
        return _run_groups(spec, out, runs)
    finally:
        _bar.close()
        _bar = None


def _run_groups(spec: AblateConfig, out: str, runs: str) -> str:
    carried: dict[str, Any] = {}
    done: list[dict[str, Any]] = []
    known: dict[str, tuple[str, dict[str, float]]] = {}  # run_key -> (trial id, metrics)
    for k, group in enumerate(spec.groups):
        trials = plan_group(spec, k, carried, runs)
        _check_plan(os.path.join(out, "groups", f"group-{k}.json"), trials)
        same = {t.id: known[run_key(t)] for t in trials if run_key(t) in known}
        for t in trials:
            if t.id in same:
                _trial_done(
                    trial_line(
                        _payload(t, spec),
                        same[t.id][1],
                        spec.metrics,
                        f" (= {same[t.id][0]}, not re-run)",
                    ),
                    t.id,
                )
        fresh = [t for t in trials if t.id not in same]
        got = dict(zip([t.id for t in fresh], run_group(spec, k, fresh, out) if fresh else []))
        metrics = [got[t.id] if t.id in got else same[t.id][1] for t in trials]
        known |= {run_key(t): (t.id, got[t.id]) for t in fresh}
        win = select(spec, metrics)
        carried = trials[win].changes
        results.write_json(
            os.path.join(out, "groups", f"group-{k}-winner.json"),
            {
                "trial": trials[win].id,
                "value": trials[win].value,
                "changes": carried,
                "metrics": metrics[win],
            },
        )
        m = spec.select_by.metric
        progress.console(
            f"group {k} {group.name}: winner {group.variable}={trials[win].label} "
            f"({m} {metrics[win][m]:.4f}, {spec.select_by.best()})"
        )
        done.append(
            {
                "trials": trials,
                "metrics": metrics,
                "winner": win,
                "run_of": {tid: ref for tid, (ref, _) in same.items()},
            }
        )
    results.write_all(out, spec, done)
    return out
