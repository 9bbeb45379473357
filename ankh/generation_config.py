"""``GenerationConfig``: every setting of one ``generate`` call, validated in one place.

Named as Hugging Face names the same object (``transformers.GenerationConfig``, the settings
``generate`` reads), with HF's field names, because ``Ankh.generate`` is HF ``generate`` in JAX:
a user moving between the two recognises every name. (vLLM's ``SamplingParams`` is the same
idea; "sampling" would misname greedy and beam search.) Defaults are this API's, as before:
64 new tokens, every filter off (``top_k`` 0 where HF's is 50).

It is passed whole -- ``Ankh.generate(inputs, generation_config)`` (HF's parameter name;
keywords override its fields, as in HF), the Serve ingress to its deployment, the variant job
to ``Ankh.variants`` -- instead of a dozen positional settings. Construction checks everything
that does not depend on the model (so a bad request fails before it reaches one);
``check_for(model_config)`` adds the bounds that do (``max_new_tokens`` within the model's
``max_length``, ``num_beams`` within the vocabulary). Numpy only: light importers (the serve
ingress) get it without JAX.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import numpy as np

MAX_BEAMS = 64
MAX_RETURN = 1024
_SEED_RANGE = (-(2**63), 2**63 - 1)  # what a JAX PRNG key can be made from


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _is_real(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """How to decode: greedy (default), sampling (``do_sample``) or beam search (``num_beams``).

    - ``max_new_tokens`` / ``min_new_tokens``: at most / at least this many tokens after the
      start token (``</s>`` included; ``</s>`` is barred until ``min_new_tokens``).
    - ``do_sample``, ``temperature``, ``top_k`` (0: off), ``top_p`` (1: off): sampling and its
      warping, in HF's order; ``seed``: same seed and inputs, same samples, however batched.
    - ``repetition_penalty``: applied in every mode (as HF).
    - ``num_beams``, ``length_penalty``: beam search (HF's ``early_stopping=False``).
    - ``num_return_sequences``: outputs per input (sampling: independent draws; beams: the best).
    """

    max_new_tokens: int = 64
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    num_beams: int = 1
    num_return_sequences: int = 1
    length_penalty: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        self._check_lengths()
        self._check_warping()
        self._check_modes()

    def _check_lengths(self) -> None:
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if not _is_int(self.min_new_tokens) or not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(
                f"min_new_tokens must be an integer in 0..max_new_tokens "
                f"({self.max_new_tokens}), got {self.min_new_tokens!r}"
            )

    def _check_warping(self) -> None:
        t = self.temperature
        if not _is_real(t) or math.isnan(t) or t <= 0 or math.isinf(t):
            raise ValueError(f"temperature must be a finite number > 0, got {t!r}")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 disables it), got {self.top_k!r}")
        if not _is_real(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        rp = self.repetition_penalty
        if not _is_real(rp) or not 0 < rp < math.inf:
            raise ValueError(f"repetition_penalty must be a finite number > 0, got {rp!r}")
        if not _is_real(self.length_penalty) or not math.isfinite(self.length_penalty):
            raise ValueError(f"length_penalty must be a finite number, got {self.length_penalty!r}")
        if not _is_int(self.seed) or not _SEED_RANGE[0] <= self.seed <= _SEED_RANGE[1]:
            raise ValueError(f"seed must be a 64-bit signed integer, got {self.seed!r}")

    def _check_modes(self) -> None:
        nb, nr = self.num_beams, self.num_return_sequences
        if self.do_sample not in (True, False):
            raise ValueError(f"do_sample must be true or false, got {self.do_sample!r}")
        if not _is_int(nb) or not 1 <= nb <= MAX_BEAMS:
            raise ValueError(f"num_beams must be an integer in 1..{MAX_BEAMS}, got {nb!r}")
        if not _is_int(nr) or not 1 <= nr <= MAX_RETURN:
            raise ValueError(
                f"num_return_sequences must be an integer in 1..{MAX_RETURN}, got {nr!r}"
            )
        if nb > 1 and self.do_sample:
            raise ValueError("beam sampling (do_sample=True with num_beams > 1) is not supported")
        if nb > 1 and nr > nb:
            raise ValueError(f"num_return_sequences ({nr}) must be <= num_beams ({nb})")
        if nb == 1 and not self.do_sample and nr != 1:
            raise ValueError(
                "greedy decoding returns one sequence: use do_sample=True or num_beams > 1 "
                "for num_return_sequences > 1"
            )

    def check_for(self, model_config) -> GenerationConfig:
        """The bounds set by the model (an ``AnkhConfig``); returns ``self``."""
        longest = model_config.max_length + 1
        if self.max_new_tokens > longest:
            raise ValueError(
                f"max_new_tokens must be an integer in 1..{longest} "
                f"(the model's max_length + </s>), got {self.max_new_tokens!r}"
            )
        max_beams = min(MAX_BEAMS, model_config.vocab_size // 2)
        if self.num_beams > max_beams:
            raise ValueError(
                f"num_beams must be an integer in 1..{max_beams}, got {self.num_beams!r}"
            )
        return self

    def replace(self, **changes: Any) -> GenerationConfig:
        """A copy with ``changes`` (validated again); an unknown name is a ``TypeError`` that
        lists the known ones."""
        unknown = sorted(set(changes) - set(FIELDS))
        if unknown:
            raise TypeError(
                f"unknown generation setting(s) {unknown}; GenerationConfig has {list(FIELDS)}"
            )
        return dataclasses.replace(self, **changes) if changes else self


FIELDS = tuple(f.name for f in dataclasses.fields(GenerationConfig))


def settings_from(
    config: GenerationConfig | None, overrides: dict[str, Any], default: GenerationConfig
) -> GenerationConfig:
    """``config`` (or ``default``) with the keyword ``overrides`` applied, as HF ``generate``
    applies its keyword arguments over ``generation_config``."""
    base = default if config is None else config
    if not isinstance(base, GenerationConfig):
        raise TypeError(
            f"the generation settings must be a GenerationConfig, got {type(base).__name__} "
            "(pass single settings by keyword: max_new_tokens=..., do_sample=...)"
        )
    return base.replace(**overrides)
