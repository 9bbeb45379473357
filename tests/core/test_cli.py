"""Every ``python -m jobs.<name>``: its documented flags, one parser/config path, one error policy."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from ankh_platform.core import cli as _cli
from ankh_platform.core import samples
from ankh_platform.core.config import ConfigError

REPO = samples.repo_root()
# Each job and the flags README.md / docs/*.md document for it (its --help must keep them all).
JOBS = {
    "ablate": [
        "--config",
        "--output",
        "--name",
        "--max-concurrent-trials",
        "--address",
        "ablate-smoke",
        "budget.steps",
    ],
    "benchmark": ["embed", "data", "train", "generate", "serve", "embed-job"],
    "check_cluster": ["--preset", "--json", "--compile", "--no-search"],
    "convert": ["export", "import", "check"],
    "embed": [
        "--model",
        "--input",
        "--output",
        "--per-residue",
        "--replicas",
        "--batch-tokens",
        "--hdf5",
        "--config",
        "key.path=value",
        "long_policy",
    ],
    "evaluate": ["--model", "--task", "--head", "--output", "--no-baselines", "limits.train"],
    "finetune": ["--model", "--task", "--output", "--config", "mode"],
    "index": ["--embeddings", "--output", "--input", "--model", "--metric"],
    "predict": ["--run", "--input", "--output"],
    "search": ["--index", "--query", "--output", "--k", "--transfer"],
    "finetune_generator": ["--model", "--output", "key.path=value", "train.steps", "data"],
    "generate": ["--model", "--output", "key.path=value", "temperatures", "parents", "sequence"],
    "prepare": ["--input", "--output", "--policy", "rows_per_shard", "validation_fraction"],
    "pretrain": [
        "--config",
        "--model",
        "--output",
        "--name",
        "--address",
        "--in-process",
        "pretrain-tiny",
    ],
    "quickstart": ["--model", "--n", "--dtype"],
    "serve": [
        "--model",
        "NAME=MODEL",
        "--host",
        "--port",
        "--detach",
        "--num-cpus",
        "--config",
        "embed.num_replicas",
    ],
    "whereami": [],
}

# Arguments that get past a job's required ones, so that the unknown flag is what is reported.
BAD_ARGS = {"convert": ("check", "--model", "x")}


def _job(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"jobs.{name}", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_every_job_is_covered():
    found = {p.stem for p in (REPO / "jobs").glob("*.py") if not p.stem.startswith("_")}
    assert found == set(JOBS)


@pytest.mark.parametrize("name", sorted(JOBS))
def test_help_lists_documented_flags_and_a_bad_flag_exits_2(name):
    r = _job(name, "--help")
    assert r.returncode == 0, r.stderr[-2000:]
    missing = [f for f in JOBS[name] if f not in r.stdout]
    assert not missing, f"jobs.{name} --help lost {missing}"
    r = _job(name, *BAD_ARGS.get(name, ()), "--no-such-flag")
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert r.stderr.startswith("error: ") and "no-such-flag" in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_override_value_exits_2_naming_the_field():
    r = _job("prepare", "--input", "x.fa", "--output", "o", "rows_per_shard=many")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: rows_per_shard: expected an integer, got 'many'"), r.stderr


# ---- the parser: one flag table, one path to the config ----------------------------------------
@dataclasses.dataclass(frozen=True)
class Inner:
    n: int = 1
    names: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Cfg:
    path: str = ""
    size: int = 2
    on: bool = False
    models: dict = dataclasses.field(default_factory=dict)
    inner: Inner = Inner()


def _named(items: list[str]) -> dict[str, str]:
    """A flag's value function: ``["a=PATH", ...]`` -> ``{"a": "PATH"}``; ConfigError otherwise."""
    pairs = [item.partition("=") for item in items]
    if bad := [n + s + p for n, s, p in pairs if not (n and s and p)]:
        raise ConfigError(f"{bad[0]!r}: expected NAME=PATH")
    return {n: p for n, _, p in pairs}


FLAGS = {
    "--path": _cli.flag("path", "where", required=True),
    "--size": _cli.flag("size", "how big", type=int),
    "--on": _cli.flag("on", "switch", action="store_true"),
    "--model": _cli.flag("models", "NAME=PATH", action="append", value=_named),
    "--n": _cli.flag("inner.n", "nested", type=int),
    "--name": _cli.flag("inner.names", "repeatable", action="append"),
    "--dry": _cli.flag(None, "the job's own"),
}


def _parse(*argv: str, presets_dir=None):
    return _cli.parse(Cfg, list(argv), "doc", "jobs.test", FLAGS, presets_dir=presets_dir)


def test_flags_overrides_and_file_precedence(tmp_path):
    cfg, args = _parse("--path", "p")
    assert cfg == Cfg(path="p") and args.dry is None
    (tmp_path / "c.yaml").write_text("size: 5\ninner: {n: 7}\nmodels: {a: x}\n")
    cfg, args = _parse(
        "--config",
        str(tmp_path / "c.yaml"),
        "size=6",
        "--path",
        "p",
        "--n",
        "9",
        "--model",
        "b=y",
        "models.c=z",
        "--name",
        "u",
        "--name",
        "v",
        "--on",
        "--dry",
        "yes",
    )
    assert cfg.size == 6  # an override beats the file
    assert cfg.inner == Inner(n=9, names=("u", "v"))  # a flag beats the file; dotted fields work
    assert cfg.models == {"a": "x", "b": "y", "c": "z"} and cfg.on and args.dry == "yes"
    cfg, _ = _parse("--path", "p", "size=3", "--size", "4")
    assert cfg.size == 4  # a flag beats an override


def test_presets_by_name(tmp_path):
    (tmp_path / "job-small.yaml").write_text("size: 11\n")
    cfg, _ = _parse("--config", "small", "--path", "p", presets_dir=tmp_path)
    assert cfg.size == 11
    with pytest.raises(SystemExit) as e:
        _parse("--config", "huge", "--path", "p", presets_dir=tmp_path)
    assert e.value.code == 2


@pytest.mark.parametrize(
    "argv, message",
    [
        ((), "--path required"),
        (("--path", "p", "--size", "big"), "invalid int value: 'big'"),
        (("--path", "p", "size=big"), "size: expected an integer, got 'big'"),
        (("--path", "p", "nope=1"), "unknown config key(s) nope"),
        (("--path", "p", "--model", "justaname"), "--model 'justaname': expected NAME=PATH"),
    ],
)
def test_usage_errors_exit_2_with_the_message(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        _parse(*argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and message in err, err


# ---- the error policy ---------------------------------------------------------------------------
def _raises(exc: BaseException):
    def main(argv):
        _cli.setup_logging(_cli.parser("jobs.test", None).parse_args(argv))
        raise exc

    return main


@pytest.mark.parametrize(
    "exc", [ConfigError("bad key"), FileNotFoundError("no such file: x"), ValueError("bad value")]
)
def test_user_errors_exit_2_without_traceback(exc, capsys):
    assert _cli.run(_raises(exc), []) == 2
    assert capsys.readouterr().err == f"error: {exc}\n"


def test_bugs_keep_their_traceback_and_verbose_shows_user_errors():
    with pytest.raises(KeyError):
        _cli.run(_raises(KeyError("a bug")), [])
    with pytest.raises(ValueError):
        _cli.run(_raises(ValueError("bad value")), ["-v"])
    _cli.run(_raises(ValueError("reset")), [])  # -v is per invocation


def test_exit_status_from_main():
    assert _cli.run(lambda argv: 1, []) == 1
    assert _cli.run(lambda argv: {"summary": 1}, []) == 0
    assert _cli.run(lambda argv: None, []) == 0


def test_float_overrides_in_exponent_notation():
    # YAML 1.1 reads "1e-3" (no dot) as a string; a float field must still take it.
    from ankh_platform.core.config import load_config

    @dataclasses.dataclass(frozen=True)
    class Lr:
        lr: float = 0.1

    assert load_config(Lr, None, ["lr=1e-3"]).lr == 0.001
    assert load_config(Lr, None, ["lr=2.5E+2"]).lr == 250.0
    with pytest.raises(ConfigError, match="lr: expected a number, got 'fast'"):
        load_config(Lr, None, ["lr=fast"])
