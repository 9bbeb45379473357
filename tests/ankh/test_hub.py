"""Hugging Face hub ids (``ankh.load("ElnaggarLab/ankh-base")``), offline from a cache laid out
exactly as ``huggingface_hub`` lays it out, compared with ``transformers`` loading the same id.

The hub itself is never reached: ``HF_HUB_OFFLINE=1`` and ``HF_HUB_CACHE`` point both libraries
at the cache built here. ``huggingface_hub`` reads those variables at import, so the checks run
in a fresh interpreter with that environment -- as a user's process would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ankh
from ankh import hub
from ankh.config import PRESETS

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

REPO = "ElnaggarLab/ankh-base"
MAIN, OLD = "a" * 40, "b" * 40  # commit hashes: main, and an older pinned revision
CFG = PRESETS["tiny"].replace(num_layers=2, num_decoder_layers=1)
ROOT = Path(__file__).resolve().parents[2]

_CHECK = r"""
import json, sys
import numpy as np, torch
from transformers import T5ForConditionalGeneration
import ankh
from ankh import convert

out = {}
model = ankh.load("ElnaggarLab/ankh-base")
out["revision"] = model.revision
ref = T5ForConditionalGeneration.from_pretrained("ElnaggarLab/ankh-base").eval()
ours = convert.flat_to_hf(model.flat_params(), model.config)
sd = {k: v.numpy() for k, v in ref.state_dict().items()}
out["same_tensors"] = all(np.array_equal(ours[k], sd[k]) for k in ours)
ids, mask = model.tokenizer.batch_encode(["MKTAYIAKQRQISFVKSHFSRQ"])
with torch.no_grad():
    enc = ref.encoder(input_ids=torch.tensor(ids).long()).last_hidden_state.numpy()[0, :-1]
mine = model.embed(["MKTAYIAKQRQISFVKSHFSRQ"], per_residue=True)[0]
out["embed_err"] = float(np.abs(mine - enc).max())
old = ankh.load("ElnaggarLab/ankh-base@" + "b" * 40)
out["old_revision"] = old.revision
out["old_differs"] = not np.array_equal(old.flat_params()[("shared",)],
                                        model.flat_params()[("shared",)])
out["kw_revision"] = ankh.load("ElnaggarLab/ankh-base", revision="v0").revision
for name, ref_ in (("wrong_revision", "ElnaggarLab/ankh-base@nope"),
                   ("missing_repo", "ElnaggarLab/ankh-huge"),
                   ("missing_weights", "ElnaggarLab/ankh-large")):
    try:
        ankh.load(ref_)
        out[name] = None
    except Exception as e:  # the test checks the type and message
        out[name] = [type(e).__name__, str(e)]
print(json.dumps(out))
"""


def _snapshot(cache: Path, repo: str, commit: str, model, refs: tuple[str, ...] = ()) -> Path:
    """One commit of ``repo`` in huggingface_hub's cache layout: refs/<name>, snapshots/<hash>."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    snap = folder / "snapshots" / commit
    model.save_hf(snap)
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    for name in refs:
        (folder / "refs" / name).write_text(commit)
    return snap


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("hf") / "hub"
    _snapshot(cache, REPO, MAIN, ankh.Ankh.random(CFG, seed=1), refs=("main",))
    _snapshot(cache, REPO, OLD, ankh.Ankh.random(CFG, seed=2), refs=("v0",))
    broken = _snapshot(
        cache, "ElnaggarLab/ankh-large", MAIN, ankh.Ankh.random(CFG, seed=3), refs=("main",)
    )
    (broken / "model.safetensors").unlink()  # a snapshot missing its weights
    return cache


def _offline_env(cache: Path) -> dict:
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_HUB_CACHE=str(cache),
        HF_HOME=str(cache.parent),
        JAX_PLATFORMS="cpu",
    )
    env.pop("HF_TOKEN", None)
    return env


@pytest.mark.timeout(600)
def test_offline_hub_id_equals_transformers_and_pins_revisions(cache):
    proc = subprocess.run(
        [sys.executable, "-c", _CHECK],
        cwd=ROOT,
        env=_offline_env(cache),
        capture_output=True,
        text=True,
        timeout=560,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["revision"] == MAIN  # the commit refs/main names, recorded on the model
    assert out["same_tensors"] is True
    assert out["embed_err"] < 1e-4
    assert out["old_revision"] == OLD and out["old_differs"] is True
    assert out["kw_revision"] == OLD  # revision= takes a ref name too
    kind, msg = out["wrong_revision"]
    assert kind == "FileNotFoundError" and "ElnaggarLab/ankh-base@nope" in msg
    assert "HF_HUB_OFFLINE" in msg
    kind, msg = out["missing_repo"]
    assert kind == "FileNotFoundError" and "ElnaggarLab/ankh-huge" in msg
    kind, msg = out["missing_weights"]
    assert kind == "FileNotFoundError" and "ElnaggarLab/ankh-large" in msg
    assert "model.safetensors" in msg


def test_what_reads_as_a_hub_id():
    assert hub.parse("ElnaggarLab/ankh-base") == ("ElnaggarLab/ankh-base", None)
    assert hub.parse("ElnaggarLab/ankh3-xl@main") == ("ElnaggarLab/ankh3-xl", "main")
    assert hub.parse("ElnaggarLab/ankh-base", revision="v1") == ("ElnaggarLab/ankh-base", "v1")
    for not_hub in ("gs://bucket/run", "/abs/path", "./rel/dir", "a/b/c", "../x/y", "tiny"):
        assert hub.parse(not_hub) is None, not_hub
    with pytest.raises(ValueError, match="differ"):
        hub.parse("ElnaggarLab/ankh-base@v1", revision="v2")


def test_an_existing_local_path_wins_over_the_hub(tmp_path, monkeypatch):
    """``org/name`` that exists on disk is that directory: the hub is never asked."""
    monkeypatch.chdir(tmp_path)
    ankh.Ankh.random(CFG, seed=4).save_hf(tmp_path / "ElnaggarLab" / "ankh-base")

    def no_hub(*a, **k):
        raise AssertionError("the hub was asked for a local directory")

    monkeypatch.setattr(hub, "snapshot", no_hub)
    model = ankh.load("ElnaggarLab/ankh-base")
    assert model.config == CFG and model.revision is None
