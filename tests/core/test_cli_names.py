"""One name per concept in every job: the model reference is ``--model``, the output ``--output``.

Walks the parser of every entry module in ``jobs/`` (and every ``jobs.benchmark`` subcommand):
each is caught as its ``main`` starts parsing, without running the job. The flags for the two
concepts come from ``platform/core/cli.py::model_flag`` / ``output_flag``, so their help starts with the
same words everywhere; the old spellings (``--checkpoint``, ``--hf``, ``--preset``) are aliases
of the same option that log one deprecation warning each.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging

import pytest

import ankh
from ankh_platform.core import cli as _cli
from ankh_platform.core import samples

REPO = samples.repo_root()
JOBS = sorted(p.stem for p in (REPO / "jobs").glob("*.py") if not p.stem.startswith("_"))
# A flag spelled like one of these that is not a model_flag/output_flag is a second name.
OTHER_NAMES = {"--model", "--output", "--checkpoint", "--checkpoints", "--out", "--output-dir"}
MODEL_FIELDS = {"model", "checkpoint", "checkpoints"}  # config fields holding a model reference
WORDS = {"model": ("--model", _cli.MODEL_HELP), "output": ("--output", _cli.OUTPUT_HELP)}


class _Caught(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser


def _catch(main, argv: list[str], monkeypatch) -> argparse.ArgumentParser:
    """The parser ``main(argv)`` builds, taken at its first parse (the job never runs)."""

    def caught(self, *a, **k):
        raise _Caught(self)

    with monkeypatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_known_args", caught)
        with pytest.raises(_Caught) as e:
            main(argv)
    return e.value.parser


def parsers(job: str, monkeypatch) -> dict[str, argparse.ArgumentParser]:
    """``{"convert export": parser, ...}``: a job's parser and its subcommands' parsers."""
    mod = importlib.import_module(f"jobs.{job}")
    if hasattr(mod, "SUBCOMMANDS"):  # jobs.benchmark: each subcommand parses its own flags
        found = {f"{job} {s}": _catch(mod.main, [s], monkeypatch) for s in mod.SUBCOMMANDS}
    else:
        found = {job: _catch(mod.main, [], monkeypatch)}
    for name, ap in list(found.items()):
        for action in ap._actions:
            if isinstance(action, argparse._SubParsersAction):
                found.update({f"{name} {s}": sub for s, sub in action.choices.items()})
    return found


def concept_actions(ap: argparse.ArgumentParser, concept: str) -> list[argparse.Action]:
    return [a for a in ap._actions if getattr(a, "concept", "") == concept]


@pytest.fixture(scope="module")
def every_parser():
    with pytest.MonkeyPatch.context() as mp:
        return {k: v for job in JOBS for k, v in parsers(job, mp).items()}


@pytest.mark.parametrize("concept", ["model", "output"])
def test_one_flag_per_concept_with_the_same_words(every_parser, concept):
    name, words = WORDS[concept]
    takers = []
    for where, ap in every_parser.items():
        actions = concept_actions(ap, concept)
        assert len(actions) <= 1, f"{where}: {len(actions)} {concept} flags"
        for a in actions:
            takers.append(where)
            assert a.option_strings[0] == name, f"{where}: {a.option_strings}"
            assert a.help == words or a.help.startswith(words + "; "), f"{where}: {a.help!r}"
            shown = ap._get_formatter()._format_action_invocation(a)
            assert shown.startswith(name) and not any(o in shown for o in a.aliases), shown
        config = getattr(ap, "config_class", None)  # a config-driven job: its fields say
        fields = {f.name for f in dataclasses.fields(config)} if config else set()
        if fields & (MODEL_FIELDS if concept == "model" else {"output"}):
            assert actions, f"{where}: its config has a {concept} field but no {name} flag"
    # the walk reaches the jobs named in the issue, subcommands included
    expected = {
        "model": {"embed", "evaluate", "serve", "quickstart", "convert export", "convert import"}
        | {"convert check", "pretrain", "generate", "finetune_generator", "benchmark embed"},
        "output": {"embed", "evaluate", "prepare", "pretrain", "generate", "ablate"}
        | {"finetune_generator", "convert export", "convert import", "benchmark learn"},
    }[concept]
    assert expected <= set(takers), expected - set(takers)


def test_no_other_name_for_the_two_concepts(every_parser):
    bad = [
        f"{where}: {o}"
        for where, ap in every_parser.items()
        for a in ap._actions
        if not getattr(a, "concept", "")
        for o in a.option_strings
        if o in OTHER_NAMES
    ]
    assert not bad, bad


def test_aliases_warn_once_and_set_the_same_destination(every_parser, caplog):
    seen = set()
    for where, ap in every_parser.items():
        for a in (a for c in WORDS for a in concept_actions(ap, c)):
            for alias in a.aliases:
                seen.add(alias)
                assert alias in a.option_strings  # the same argparse option: the same dest
                a.warned = set()
                by_alias, by_name = argparse.Namespace(), argparse.Namespace()
                caplog.clear()
                with caplog.at_level(logging.WARNING, logger="jobs"):
                    for _ in range(2):
                        a(ap, by_alias, "x" if a.nargs is None else ["x"], alias)
                        a(ap, by_name, "x" if a.nargs is None else ["x"], a.option_strings[0])
                assert vars(by_alias) == vars(by_name) and vars(by_name), where
                msgs = [r.getMessage() for r in caplog.records]
                want = f"{alias} is deprecated; use {a.option_strings[0]}"
                assert msgs == [want], f"{where}: {msgs}"
    assert {"--checkpoint", "--hf", "--preset"} <= seen, seen


def test_an_alias_end_to_end(tmp_path, caplog, capsys):
    """``jobs.convert check --hf DIR`` (the old spelling) runs as ``--model DIR`` does."""
    from jobs import convert

    hf = tmp_path / "hf"
    ankh.Ankh.random(ankh.get_preset("tiny"), seed=0).save_hf(str(hf))
    with caplog.at_level(logging.WARNING, logger="jobs"):
        assert convert.main(["check", "--hf", str(hf)]) == 0
    # only the job's own records: JAX and the converter log too (which depends on test order)
    warned = [r.getMessage() for r in caplog.records if r.name == "jobs"]
    assert warned == ["--hf is deprecated; use --model"]
    assert "round trip bit-exact" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, checkpoint, models",
    [
        (["--model", "/runs/base", "--model", "ft=/runs/ft"], "/runs/base", {"ft": "/runs/ft"}),
        (["--checkpoint", "/a", "--model", "b=/b"], "/a", {"b": "/b"}),  # the old invocation
        (["--model", "gs://b/run=3", "--model", "v2=org/x@r"], "gs://b/run=3", {"v2": "org/x@r"}),
        (["--model", "ft=/runs/ft"], "tiny", {"ft": "/runs/ft"}),  # the default stays
    ],
)
def test_serve_model_is_the_default_or_a_named_extra(argv, checkpoint, models):
    from ankh_platform.serve.schema import ServeConfig
    from jobs import serve

    cfg, _ = _cli.parse(ServeConfig, argv, None, "jobs.serve", serve.FLAGS)
    assert (cfg.checkpoint, cfg.models) == (checkpoint, models)


def test_serve_refuses_two_default_models(capsys):
    from ankh_platform.serve.schema import ServeConfig
    from jobs import serve

    with pytest.raises(SystemExit) as e:
        _cli.parse(ServeConfig, ["--model", "a", "--model", "b"], None, "jobs.serve", serve.FLAGS)
    assert e.value.code == 2 and "one default model" in capsys.readouterr().err


def test_config_jobs_take_the_flag_or_the_override(tmp_path):
    from jobs import pretrain

    by_flag, _ = pretrain.parse(["--model", "small", "--output", str(tmp_path)])
    by_override, _ = pretrain.parse(["model=small", f"output={tmp_path}"])
    assert by_flag == by_override and by_flag.model == "small"
