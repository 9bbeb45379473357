"""The shape and batching policy (``ankh.batching``): values, coverage, and that every entry
point takes it from there."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ankh import batching
from ankh.batching import (
    DEFAULT_BATCH_TOKENS,
    SERVE_MIN_LENGTH,
    BatchPlan,
    batch_rows,
    decode_ladder,
    fill_rows,
    full_rows,
    ladder_batches,
    length_ladder,
    pad_rows,
    padded_length,
    row_sizes,
    rung,
    sequence_ladder,
    sorted_batches,
    token_budget_batches,
)

REPO = Path(__file__).resolve().parents[2]


# ---- the ladder ----------------------------------------------------------------------------------
def test_length_ladder_values():
    # offline (Ankh.embed / generate / score): 16, 24, 32, 48, ... and the model's max + </s>
    assert (
        sequence_ladder(1024)
        == length_ladder(1025)
        == [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1025]
    )
    # Serve's default: the same series from 64 (1024 left out next to 1025)
    assert sequence_ladder(1024, SERVE_MIN_LENGTH) == [64, 96, 128, 192, 256, 384, 512, 768, 1025]
    assert sequence_ladder(512, SERVE_MIN_LENGTH) == [64, 96, 128, 192, 256, 384, 513]
    # the batch-embedding job: doubling from 128, top rounded up to 64 (1024 left out by 1088)
    assert length_ladder(1025, 128, steps_per_octave=1, align=64) == [128, 256, 512, 1088]
    assert length_ladder(4097, 128, steps_per_octave=1, align=64) == [
        128,
        256,
        512,
        1024,
        2048,
        4160,
    ]
    assert length_ladder(129, 128, steps_per_octave=1, align=64) == [128, 192]
    with pytest.raises(ValueError, match="bad ladder"):
        length_ladder(100, 16, steps_per_octave=3)


def test_decode_ladder_pads_under_a_quarter():
    # generation's inputs: four rungs per octave, the top fits max_length + </s>
    assert decode_ladder(1024) == [
        16,
        20,
        24,
        28,
        32,
        40,
        48,
        56,
        64,
        80,
        96,
        112,
        128,
        160,
        192,
        224,
        256,
        320,
        384,
        448,
        512,
        640,
        768,
        896,
        1025,
    ]
    assert decode_ladder(200)[-3:] == [160, 192, 201]
    ladder = decode_ladder(1024)
    assert all(padded_length(n, ladder) < 1.25 * n for n in range(17, 1026))
    assert set(sequence_ladder(1024)) <= set(ladder)  # no rung of the offline ladder is lost


def test_rung_is_the_unbounded_series():
    assert [rung(n) for n in (1, 16, 17, 25, 49, 700, 1025)] == [16, 16, 24, 32, 64, 768, 1536]
    for n in range(2, 3000):  # doubling rungs from 16 = the next power of two, at least 16
        assert rung(n, 16, steps_per_octave=1) == max(16, 1 << (n - 1).bit_length())
    ladder = length_ladder(4097)
    assert all(padded_length(n, ladder) == rung(n) for n in range(1, 3073))  # below the top


def test_padded_length_limits():
    ladder = length_ladder(1025, 64)
    assert padded_length(1, ladder) == 64 and padded_length(769, ladder) == 1025
    with pytest.raises(ValueError, match="exceed the largest padded length 1025"):
        padded_length(1026, ladder)


# ---- rows per shape and padding --------------------------------------------------------------------
def test_rows_per_shape():
    assert full_rows(8192, 1025) == 7 and full_rows(100, 1025) == 1
    assert row_sizes(16) == [1, 2, 4, 8, 16] and row_sizes(12, 4) == [1, 4, 12]
    assert row_sizes(1) == [1]
    assert [batch_rows(c, 12) for c in (1, 2, 3, 5, 9, 12, 40)] == [1, 2, 4, 8, 12, 12, 12]
    assert BatchPlan([32, 64, 128], 512, growth=2).rows == {
        32: [1, 2, 4, 8, 16],
        64: [1, 2, 4, 8],
        128: [1, 2, 4],
    }
    with pytest.raises(ValueError, match=">= 2"):
        BatchPlan([1, 64])


def test_pad_rows():
    ids, mask = pad_rows([np.array([5, 6, 1]), np.array([7, 1])], rows=3, length=4, pad_id=0)
    assert ids.tolist() == [[5, 6, 1, 0], [7, 1, 0, 0], [0, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]]
    assert ids.dtype == mask.dtype == np.int32
    ids, _ = pad_rows([np.array([4, 1])], pad_id=9, length=3)
    assert ids.tolist() == [[4, 1, 9]]
    with pytest.raises(ValueError, match="does not fit"):
        pad_rows([np.arange(5)], rows=1, length=4)
    with pytest.raises(ValueError, match="3 sequences for 2 rows"):
        pad_rows([np.arange(2)] * 3, rows=2, length=4)


# ---- which sequences share a call -------------------------------------------------------------------
def test_token_budget_batches_cover_everything_once():
    rng = np.random.default_rng(0)
    lengths = [int(n) for n in rng.integers(2, 700, 300)]
    ladder = length_ladder(1025)
    plan = BatchPlan(ladder, 4096)
    batches = token_budget_batches(lengths, ladder, 4096)
    seen = [i for idx, _, _ in batches for i in idx]
    assert sorted(seen) == list(range(len(lengths)))  # every index exactly once
    for idx, length, rows in batches:
        assert (rows, length) in plan.shapes() and len(idx) <= rows
        assert rows * length <= max(4096, length)
        assert all(lengths[i] <= length for i in idx)
    assert len({(rows, length) for _, length, rows in batches}) <= 20
    # Full calls where a length has enough sequences: at most one partial call per length.
    partial = [length for idx, length, rows in batches if len(idx) < plan.rows[length][-1]]
    assert len(partial) <= len(set(partial)) and len(partial) <= len(ladder)


def test_sorted_batches_fixed_size_shortest_first():
    lengths = [30, 5, 17, 17, 2, 90, 40]
    out = list(sorted_batches(lengths, 3, length_ladder(129)))
    assert [list(idx) for idx, _, _ in out] == [[4, 1, 2], [3, 0, 6], [5]]
    assert [(length, rows) for _, length, rows in out] == [(24, 3), (48, 3), (96, 1)]
    assert [rows for _, _, rows in sorted_batches([3] * 5, 8, [16])] == [8]  # 5 -> 8 rows


# ---- segment packing on the ladder (batch embedding) -----------------------------------------------
def test_ladder_packing_each_piece_once_in_fixed_shapes():
    rng = np.random.default_rng(1)
    lengths = [int(n) for n in np.minimum(rng.lognormal(5.5, 0.7, 2000), 1025).astype(int) + 2]
    ladder = length_ladder(1025, 128, steps_per_octave=1, align=64)
    for row_len, members in fill_rows(lengths, ladder, max_segments=8):
        assert row_len in ladder and sum(lengths[p] for p in members) <= row_len
        assert len(members) <= 8 and lengths[members[0]] == max(lengths[p] for p in members)
    seen, slots = [], 0
    calls = list(ladder_batches(lengths, ladder, 8192, max_segments=8))
    for row_len, nrows, rows in calls:
        assert nrows == full_rows(8192, row_len) and 0 < len(rows) <= nrows
        assert len(rows) == nrows or row_len == ladder[-1]  # only the top pads with empty rows
        for members in rows:
            assert sum(lengths[p] for p in members) <= row_len and len(members) <= 8
            seen += members
        slots += nrows * row_len
    assert sorted(seen) == list(range(len(lengths)))
    assert 1 - sum(lengths) / slots < 0.05


# ---- one place --------------------------------------------------------------------------------------
def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            out.add(node.module or "")
    return out


def test_batching_is_a_leaf_and_light():
    assert _imports(REPO / "ankh" / "batching.py") <= {
        "__future__",
        "bisect",
        "collections",
        "collections.abc",
        "typing",
        "numpy",
    }
    # Light Ray tasks (packing, merging) import these without JAX.
    code = (
        "import sys, ankh.batching, ankh.packing, ankh.tokenizer, ankh.config\n"
        "import ankh_platform.embed.pack\n"
        "assert 'jax' not in sys.modules, 'jax imported'\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-2000:]


def test_no_other_module_restates_the_policy():
    """The ladder, the padding loop and the row counts are defined in ``ankh.batching`` only."""
    names = {
        "length_ladder",
        "sequence_ladder",
        "rung",
        "padded_length",
        "pad_rows",
        "row_sizes",
        "batch_rows",
        "full_rows",
        "token_budget_batches",
        "sorted_batches",
        "fill_rows",
        "merge_rows",
        "ladder_batches",
        "bucket_length",
        "default_buckets",
        "BucketPlan",
        "BatchPlan",
        "_Pool",
    }
    for path in [*(REPO / "ankh").rglob("*.py"), *(REPO / "platform").rglob("*.py")]:
        if path.name == "batching.py" and path.parent.name == "ankh":
            continue
        src = path.read_text()
        tree = ast.parse(src)
        defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        assert not defined & names, f"{path} defines {defined & names}"
        assert "* 3 // 2" not in src and ".bit_length()" not in src, f"{path} restates a ladder"


def test_every_entry_defaults_to_one_batch_token_budget():
    from ankh.api import Ankh
    from ankh_platform.embed.job import EmbedJobConfig
    from ankh_platform.embed.pack import EmbedPackSpec
    from ankh_platform.evaluate.embedders import make_extractor
    from ankh_platform.evaluate.heads import EvaluateJobConfig
    from ankh_platform.serve.schema import EmbedOptions

    def default(fn, name):
        return inspect.signature(fn).parameters[name].default

    assert DEFAULT_BATCH_TOKENS == batching.DEFAULT_BATCH_TOKENS == 4096
    for fn in (
        Ankh.embed,
        Ankh.masked_marginals,
        Ankh.score,
        Ankh.pseudo_log_likelihood,
        Ankh.per_residue_log_probs,
        make_extractor,
        token_budget_batches,
    ):
        assert default(fn, "batch_tokens") == DEFAULT_BATCH_TOKENS, fn
    assert EmbedOptions().batch_tokens == EmbedJobConfig().batch_tokens == DEFAULT_BATCH_TOKENS
    assert EmbedPackSpec(max_length=1024).batch_tokens == DEFAULT_BATCH_TOKENS
    assert EvaluateJobConfig().embed_batch_tokens == DEFAULT_BATCH_TOKENS
