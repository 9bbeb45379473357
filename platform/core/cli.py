"""What every ``python -m jobs.<name>`` shares: its parser, its logging, its error policy.

- **Parser.** A job with a config dataclass lists its flags in one table, ``{"--flag": flag(...)}``,
  each naming the config field it sets (dotted, e.g. ``"limits.train"``) or none (a flag of the
  job itself). ``parse`` builds ``prog [--config FILE] [flags] [key.path=value ...]`` from it,
  with every config field described in ``--help``, and hands file, overrides and flags to
  ``ankh_platform.core.config.load_config`` -- the one path from argv to a config. Flags win
  over ``key.path=value`` overrides, which win over the file.
- **One name per concept.** Every job takes its model reference as ``--model`` (``model_flag``)
  and writes to ``--output`` (``output_flag``), with the same help words everywhere
  (``MODEL_HELP``, ``OUTPUT_HELP``). An older spelling (``--checkpoint``, ``--hf``) is an alias
  of the same option: hidden from ``--help``, same destination, one deprecation warning each.
- **Logging.** One format (``ankh_platform.core.runtime.configure_logging``); ``-v/--verbose``
  shows debug messages, framework internals (and tracebacks of user errors), ``-q/--quiet``
  only warnings: no progress bars or status lines (``ankh_platform.core.progress``).
- **Errors.** ``run(main)`` is every job's ``__main__``: expected user errors (``ValueError`` and
  its kin -- ConfigError, TokenizerError, FastaError, CheckpointError -- and FileNotFoundError),
  bad flags included, print ``error: <message>`` on stderr and exit 2, without a traceback; any
  other exception is a bug and keeps its traceback. A ``main`` that returns an int sets the exit
  status (``check_cluster``: 1 when a file disagrees). ``main(argv)`` itself raises, so tests
  and other Python callers see the exception.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ankh_platform.core import progress
from ankh_platform.core.config import ConfigError, describe, load_config
from ankh_platform.core.runtime import configure_logging

T = TypeVar("T")
USER_ERRORS = (ValueError, FileNotFoundError)
_SHOW_TRACEBACKS = False  # set by -v
log = logging.getLogger("jobs")
# Deprecation warnings met while ``parse_args`` parses: logged once logging is set up from -v/-q,
# in the one format (a parser outside ``parse_args``, a benchmark's, logs them at once).
_held: list[str] | None = None

MODEL_HELP = (
    "the model: a preset name, an HF Ankh directory or our run/checkpoint directory "
    "(local or gs://), or a hub id (org/name[@revision])"
)
OUTPUT_HELP = "where the output goes: a directory"


@dataclasses.dataclass(frozen=True)
class Flag:
    """A flag: its argparse options and the config field it sets (``field=None``: the job's own)."""

    # the config field it sets; a tuple: several, and ``value`` returns {field: value} for those
    # it sets (serve's --model: the default model and the named extra ones)
    field: str | tuple[str, ...] | None
    options: dict[str, Any]
    value: Callable[[Any], Any] | None = None  # argparse value -> config value
    required: bool = False  # the config field must end up non-empty (from this flag or an override)
    aliases: tuple[str, ...] = ()  # old spellings: same option, hidden, warn once each
    concept: str = ""  # "model" / "output": the one-name-per-concept flags (tests walk them)


def flag(
    field: str | tuple[str, ...] | None,
    help: str,
    *,
    value: Callable[[Any], Any] | None = None,
    required: bool = False,
    aliases: tuple[str, ...] = (),
    **options: Any,
) -> Flag:
    """``flag("limits.train", "proteins", type=int)``; ``options`` go to ``add_argument``."""
    return Flag(field, {"help": help, **options}, value, required, tuple(aliases))


def _concept_flag(concept: str, words: str, field, note: str, **kw: Any) -> Flag:
    f = flag(field, f"{words}; {note}" if note else words, **kw)
    return dataclasses.replace(f, concept=concept)


def model_flag(
    field: str | tuple[str, ...] | None, note: str = "", *, aliases: tuple[str, ...] = (), **kw
) -> Flag:
    """The ``--model`` flag: ``MODEL_HELP``, then the job's ``note`` (default, repeatable...)."""
    return _concept_flag("model", MODEL_HELP, field, note, aliases=aliases, **kw)


def output_flag(field: str | None, note: str = "", *, aliases: tuple[str, ...] = (), **kw) -> Flag:
    """The ``--output`` flag: ``OUTPUT_HELP``, then the job's ``note`` (what goes there...)."""
    return _concept_flag("output", OUTPUT_HELP, field, note, aliases=aliases, **kw)


class _HideAliases(argparse.HelpFormatter):
    """Lists an option under its one name: the deprecated aliases work but are not advertised."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        hidden = getattr(action, "aliases", ())
        if not hidden:
            return super()._format_action_invocation(action)
        shown = [o for o in action.option_strings if o not in hidden]
        saved, action.option_strings = action.option_strings, shown
        try:
            return super()._format_action_invocation(action)
        finally:
            action.option_strings = saved


def _deprecating(base: type[argparse.Action], name: str, aliases: tuple[str, ...]):
    """``base`` (store, append, ...) that logs one warning per alias the first time it is used."""

    class Deprecating(base):  # type: ignore[misc, valid-type]
        def __call__(self, parser, namespace, values, option_string=None):
            if option_string in aliases and option_string not in self.warned:
                self.warned.add(option_string)
                message = f"{option_string} is deprecated; use {name}"
                if _held is None:
                    log.warning(message)
                else:
                    _held.append(message)
            super().__call__(parser, namespace, values, option_string)

    Deprecating.__name__ = f"Deprecating{base.__name__}"
    return Deprecating


def add(ap: argparse.ArgumentParser, name: str, f: Flag, **extra: Any) -> argparse.Action:
    """Add flag ``f`` as ``name`` (its aliases too) to any argparse parser, a job's or not."""
    options = {**f.options, **extra}
    if not f.aliases:
        action = ap.add_argument(name, **options)
    else:
        # argparse's own table of action names (store, append, store_true...) -> classes
        base = ap._registry_get("action", options.get("action"), options.get("action"))
        options["action"] = _deprecating(base, name, f.aliases)
        action = ap.add_argument(name, *f.aliases, **options)
        action.warned = set()
        if not issubclass(ap.formatter_class, _HideAliases):
            ap.formatter_class = type("Formatter", (_HideAliases, ap.formatter_class), {})
    action.aliases, action.concept = f.aliases, f.concept
    return action


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own usage errors follow the one error policy
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def parser(prog: str, doc: str | None, epilog: str | None = None) -> argparse.ArgumentParser:
    """A job's argument parser (``prog``: ``jobs.<name>``) with ``-v/--verbose`` and ``-q/--quiet``."""
    ap = _Parser(
        prog=f"python -m {prog}",
        description=doc,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_verbosity(ap)
    return ap


def add_verbosity(ap: argparse.ArgumentParser) -> None:
    g = ap.add_mutually_exclusive_group()
    g.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="debug logging, framework internals (Ray, Orbax) on the console; tracebacks of errors",
    )
    g.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="warnings and errors only: no progress bars or status lines",
    )


def setup_logging(args: argparse.Namespace) -> None:
    global _SHOW_TRACEBACKS
    _SHOW_TRACEBACKS = bool(getattr(args, "verbose", False))
    level = (
        logging.DEBUG
        if _SHOW_TRACEBACKS
        else logging.WARNING
        if getattr(args, "quiet", False)
        else logging.INFO
    )
    configure_logging(level)
    progress.set_quiet(getattr(args, "quiet", False))  # -q: no progress bars or status lines


def parse_args(
    ap: argparse.ArgumentParser, argv: list[str] | None, intermixed: bool = False
) -> argparse.Namespace:
    """Parse, then set up logging from ``-v``/``-q`` (and log the old spellings used)."""
    global _held
    _held = []
    try:
        args = ap.parse_intermixed_args(argv) if intermixed else ap.parse_args(argv)
        setup_logging(args)
        held = _held
    finally:
        _held = None
    for message in held:
        log.warning(message)
    return args


def parse(
    cls: type[T],
    argv: list[str] | None,
    doc: str | None,
    prog: str,
    flags: dict[str, Flag] | None = None,
    presets_dir: str | Path | None = None,
) -> tuple[T, argparse.Namespace]:
    """``prog [--config FILE|PRESET] [flags] key.path=value ...`` -> (config, parsed flags)."""
    flags = flags or {}
    presets = sorted(p.stem for p in Path(presets_dir).glob("*.yaml")) if presets_dir else []
    epilog = (
        "overrides (key.path=value; values are YAML; a mapping merges into the current "
        "one key by key, {} clears it):\n"
        + "\n".join(describe(cls))
        + (f"\n\npresets: {', '.join(presets)}" if presets else "")
    )
    ap = parser(prog, doc, epilog)
    ap.add_argument(
        "--config",
        help="YAML config file" + (", or the name of a shipped preset" if presets_dir else ""),
    )
    dests = {}
    for name, f in flags.items():
        extra = {"default": argparse.SUPPRESS} if f.field else {}  # absent = not given
        dests[name] = add(ap, name, f, **extra).dest
    ap.add_argument("overrides", nargs="*", metavar="key.path=value")
    ap.config_class = cls  # what tests/core/test_cli_names.py checks the flags against
    args = parse_args(ap, argv, intermixed=True)  # overrides may come before and after flags
    fields = {}
    for name, f in flags.items():
        if f.field and hasattr(args, dests[name]):
            raw = getattr(args, dests[name])
            try:
                value = f.value(raw) if f.value else raw
            except ConfigError as e:
                ap.error(f"{name} {e}")
            fields.update(value if isinstance(f.field, tuple) else {f.field: value})
    try:
        cfg = load_config(cls, args.config, args.overrides, fields, presets_dir)
    except ConfigError as e:
        ap.error(str(e))
    missing = [n for n, f in flags.items() if f.required and not _get(cfg, _first(f.field))]
    if missing:
        ap.error(f"{', '.join(missing)} required")
    return cfg, args


def _first(field: str | tuple[str, ...]) -> str:
    return field[0] if isinstance(field, tuple) else field


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def run(main: Callable[[list[str]], Any], argv: list[str] | None = None) -> int:
    """Call ``main(argv)`` under the error policy; returns the exit status."""
    try:
        out = main(sys.argv[1:] if argv is None else list(argv))
    except USER_ERRORS as e:
        if _SHOW_TRACEBACKS:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return out if isinstance(out, int) and not isinstance(out, bool) else 0
