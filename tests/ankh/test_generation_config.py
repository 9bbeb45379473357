"""``GenerationConfig``: one validated object for every generation setting, passed whole or built
from keywords, with the same outputs either way."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import ankh
from ankh.config import get_preset
from ankh.generation_config import FIELDS, GenerationConfig, settings_from


@pytest.fixture(scope="module")
def model():
    from ankh.api import Ankh

    return Ankh.random(get_preset("tiny"), seed=0)


SEQS = ["MKTAYIAKQRQISFVKSHFSRQ", "MKV<extra_id_0>LLA", "GGSAAAKLMNPQ"]


def test_defaults_and_frozen():
    gc = GenerationConfig()
    assert ankh.GenerationConfig is GenerationConfig  # numpy only: no JAX import needed
    assert (gc.max_new_tokens, gc.do_sample, gc.num_beams, gc.num_return_sequences) == (
        64,
        False,
        1,
        1,
    )
    assert (gc.temperature, gc.top_k, gc.top_p, gc.repetition_penalty) == (1.0, 0, 1.0, 1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        gc.temperature = 2.0  # type: ignore[misc]
    assert set(FIELDS) >= {"min_new_tokens", "length_penalty", "seed"}


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(max_new_tokens=0), "max_new_tokens must be an integer >= 1"),
        (dict(max_new_tokens=8.0), "max_new_tokens"),
        (dict(max_new_tokens=8, min_new_tokens=9), r"min_new_tokens .* 0\.\.max_new_tokens \(8\)"),
        (dict(do_sample="yes"), "do_sample"),
        (dict(temperature=float("inf")), "temperature"),
        (dict(top_k=True), "top_k"),
        (dict(top_p=0), "top_p"),
        (dict(repetition_penalty=-1.0), "repetition_penalty"),
        (dict(length_penalty=float("nan")), "length_penalty"),
        (dict(seed=2**64), "seed"),
        (dict(seed=1.5), "seed"),
        (dict(num_beams=65), r"num_beams must be an integer in 1\.\.64"),
        (dict(num_return_sequences=0), "num_return_sequences"),
        (dict(num_beams=2, num_return_sequences=3), r"num_return_sequences \(3\) must be <="),
        (dict(num_beams=2, do_sample=True), "beam sampling"),
        (dict(num_return_sequences=2), "greedy decoding returns one sequence"),
    ],
)
def test_construction_names_the_bad_field(kw, msg):
    with pytest.raises(ValueError, match=msg):
        GenerationConfig(**kw)


def test_model_bounds_are_checked_against_the_model_config():
    cfg = get_preset("tiny")
    ok = GenerationConfig(max_new_tokens=cfg.max_length + 1)
    assert ok.check_for(cfg) is ok
    with pytest.raises(ValueError, match=rf"1\.\.{cfg.max_length + 1} \(the model's max_length"):
        GenerationConfig(max_new_tokens=cfg.max_length + 2).check_for(cfg)
    small = dataclasses.replace(cfg, vocab_size=8)
    with pytest.raises(ValueError, match=r"num_beams must be an integer in 1\.\.4"):
        GenerationConfig(num_beams=5).check_for(small)


def test_keywords_override_a_whole_config_and_unknown_names_are_refused():
    base = GenerationConfig(do_sample=True, temperature=0.7, seed=3)
    got = settings_from(base, {"seed": 4}, GenerationConfig())
    assert got == GenerationConfig(do_sample=True, temperature=0.7, seed=4)
    assert settings_from(None, {}, base) is base
    with pytest.raises(TypeError, match="unknown generation setting.*'temprature'"):
        base.replace(temprature=1.0)
    with pytest.raises(TypeError, match="must be a GenerationConfig, got int"):
        settings_from(64, {}, GenerationConfig())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="beam sampling"):  # a replaced copy is validated again
        base.replace(num_beams=2)


@pytest.mark.timeout(300)
def test_generate_whole_or_by_keyword_gives_the_same_tokens(model):
    kw = dict(max_new_tokens=8, do_sample=True, temperature=0.8, top_k=6, seed=5)
    by_kw = model.generate_ids(SEQS, **kw)
    whole = model.generate_ids(SEQS, GenerationConfig(**kw))
    mixed = model.generate_ids(SEQS, GenerationConfig(**{**kw, "seed": 9}), seed=5)
    for a, b, c in zip(by_kw, whole, mixed):
        for x, y, z in zip(a, b, c):
            np.testing.assert_array_equal(x, y)
            np.testing.assert_array_equal(x, z)
    assert model.generate(SEQS, GenerationConfig(**kw)) == model.generate(SEQS, **kw)
    with pytest.raises(ValueError, match="max_new_tokens must be an integer in 1.."):
        model.generate(SEQS, GenerationConfig(max_new_tokens=model.config.max_length + 2))


@pytest.mark.timeout(300)
def test_variants_take_the_sampling_settings_whole(model):
    parent = SEQS[0]
    by_kw = model.variants(parent, n=3, temperature=1.2, top_k=8, seed=2)
    whole = model.variants(
        parent, n=3, generation_config=GenerationConfig(do_sample=True, temperature=1.2, top_k=8)
    )
    assert whole.generated == by_kw.generated  # seed 2 vs 0: different draws, same accounting
    again = model.variants(
        parent,
        n=3,
        generation_config=GenerationConfig(do_sample=True, temperature=1.2, top_k=8, seed=2),
    )
    assert again.to_dict() == by_kw.to_dict()
    for bad in (dict(do_sample=False), dict(num_return_sequences=2), dict(min_new_tokens=1)):
        with pytest.raises(ValueError, match="variants samples one answer"):
            model.variants(parent, n=1, **bad)
