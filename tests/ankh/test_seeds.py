"""derive_seed: one stable, collision-free way to split a user seed into named streams."""

from __future__ import annotations

import numpy as np

from ankh.seeds import derive_seed


def test_stable_across_runs_and_machines():
    # Pinned values: a change here silently changes every data order and sample of saved runs.
    assert derive_seed(0, "file-order", 0) == 1069338844
    assert derive_seed(0, "file-order", 1) == 456138983


def test_labels_name_independent_streams():
    seeds = {derive_seed(s, label, i) for s in range(4) for label in ("a", "b") for i in range(50)}
    assert len(seeds) == 4 * 2 * 50
    # The salts it replaces collided by arithmetic: seed 7919 of parent 0 == seed 0 of parent 1.
    assert derive_seed(7919, "parent", 0) != derive_seed(0, "parent", 1)
    assert derive_seed(0, "x", 1, 2) != derive_seed(0, "x", 12) != derive_seed(0, "x1", 2)


def test_any_int_seed_gives_a_32_bit_seed():
    for s in (-1, 0, 2**40, 2**70):
        d = derive_seed(s, "x")
        assert 0 <= d < 2**32
        np.random.default_rng(d)
