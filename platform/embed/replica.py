"""The batch-embedding job's workers: the pack UDF (tasks) and the model replica (actors).

``pack_udf`` turns a group of input rows into fixed-shape model batches (``embed.pack``);
``EmbedReplica`` is one replica: it loads the checkpoint from its path, compiles every batch
shape of the encoder program (``ankh.embedding.encode_pool`` on packed rows) ahead of time (no
warm-up batches executed), and returns per-piece pooled sums (and per-residue states) plus the
counters the driver's summary reports (where the time went).
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ankh.tokenizer import AnkhTokenizer
from ankh_platform.embed import inputs
from ankh_platform.embed.pack import P_SEQ, PIECE_COLUMNS, EmbedPackSpec, layout, pack, prepare

log = logging.getLogger(__name__)


def pack_udf(batch: dict, spec: EmbedPackSpec, vocab: dict) -> dict:
    """Ray Data UDF: a group of input rows -> model batches (one row each) of fixed shapes."""
    tok = AnkhTokenizer(vocab)
    # each record travels under its shard and input row (``inputs.row_key``): parts record
    # which input rows they hold, so a re-run after a kill redoes only the rest
    shards = [inputs.row_key(inputs.shard_stem(p), r) for p, r in zip(batch["path"], batch["row"])]
    prep = prepare(batch["id"].tolist(), batch["sequence"].tolist(), shards, tok, spec)
    out = {"ids": [], "pieces": [], "meta": []}
    notes = {(sh, i): why for sh, i, why in prep.notes}
    seqs = [
        [k[0], k[1], n, w, notes.get(k, "")]
        for k, n, w in zip(prep.seq_key, prep.seq_len, prep.seq_nwin)
    ]
    errors = prep.errors  # ride on the group's first model batch
    for b in pack(prep, spec):
        used = sorted(set(b["pieces"][:, P_SEQ].tolist()))
        remap = {s: i for i, s in enumerate(used)}
        b["pieces"][:, P_SEQ] = [remap[s] for s in b["pieces"][:, P_SEQ].tolist()]
        out["ids"].append(b["ids"])
        out["pieces"].append(b["pieces"])
        out["meta"].append(json.dumps({"seqs": [seqs[s] for s in used], "errors": errors}))
        errors = []
    if errors:  # nothing to embed in this group, but problems to report
        out["ids"].append(np.zeros((0, 0), np.int32))
        out["pieces"].append(np.zeros((0, len(PIECE_COLUMNS)), np.int32))
        out["meta"].append(json.dumps({"seqs": [], "errors": errors}))
    return {
        "ids": _objects(out["ids"]),
        "pieces": _objects(out["pieces"]),
        "meta": np.asarray(out["meta"], object),
    }


def _objects(arrs: list) -> np.ndarray:
    out = np.empty(len(arrs), object)
    out[:] = arrs
    return out


class EmbedReplica:
    """One model replica (a Ray actor): loads the checkpoint by path, compiles every shape once."""

    def __init__(
        self,
        checkpoint: str,
        spec: EmbedPackSpec,
        per_residue: bool,
        layer: int,
        compute_dtype: str,
    ):
        import jax
        import jax.numpy as jnp

        import ankh
        from ankh.embedding import encoder_depth, jit_encoder

        t0 = time.perf_counter()
        self.model = ankh.load(checkpoint, dtype=compute_dtype)  # from the path: nothing pickled
        if spec.prefix != self.model.task_prefix("[NLU]"):  # pieces were packed for another model
            raise ValueError(
                f"{checkpoint}: packed with task prefix {spec.prefix!r}, the model "
                f"reads {self.model.task_prefix('[NLU]')!r}"
            )
        self.spec, self.per_residue = spec, per_residue
        fn = jit_encoder(
            self.model.graphdef,
            per_residue,
            encoder_depth(layer, self.model.config.num_layers),
            spec.max_segments,
        )
        # Ahead-of-time: compile each fixed shape from its signature alone (no warm-up batch
        # executed), keep the executables; a call of any other shape is an error, never a
        # silent recompilation in the middle of the run. Tracing is Python (one thread); XLA
        # compiles the shapes in parallel threads (it releases the GIL).
        lowered = {}
        for rows, length in spec.shapes():
            i32 = jax.ShapeDtypeStruct((rows, length), jnp.int32)
            f32 = jax.ShapeDtypeStruct((rows, length), jnp.float32)
            lowered[(rows, length)] = fn.lower(self.model.params, i32, i32, i32, f32)
        with ThreadPoolExecutor(max(1, min(len(lowered), os.cpu_count() or 1, 4))) as ex:
            self.exe = dict(zip(lowered, ex.map(lambda lo: lo.compile(), lowered.values())))
        self.init_s = time.perf_counter() - t0  # reported once, with this replica's first batch
        self.ready_at = time.time()  # wall clock: the driver's start-up figure
        log.info("replica ready in %.1fs (shapes %s)", self.init_s, spec.shapes())

    def encode(self, ids, seg, pos, wt):
        """The compiled model on one packed batch: ``(pooled [B, S, e], hidden [B, L, e]|None)``."""
        exe = self.exe.get(tuple(ids.shape))
        if exe is None:
            raise ValueError(
                f"batch shape {tuple(ids.shape)} is none of the compiled shapes {sorted(self.exe)}"
            )
        out = exe(self.model.params, ids, seg, pos, wt)
        return out["pooled"], out.get("hidden")

    def compiled(self) -> int:
        """Executables compiled (one per shape, at start-up)."""
        return len(self.exe)

    def __call__(self, batch: dict) -> dict:
        t0 = time.perf_counter()
        rows = [
            self._one(batch["ids"][i], batch["pieces"][i], json.loads(batch["meta"][i]))
            for i in range(len(batch["meta"]))
        ]
        out = {
            k: np.concatenate([r[k] for r in rows])
            if k != "residues"
            else _objects([x for r in rows for x in r[k]])
            for k in rows[0]
        }
        # Where the time goes (summary): replica start-up once, compiled executables so far.
        out["init_s"] = np.zeros(len(out["id"]), np.float64)
        out["ready_at"] = np.zeros(len(out["id"]), np.float64)
        out["compiled"] = np.full(len(out["id"]), self.compiled(), np.int64)
        if len(out["id"]) and self.init_s is not None:
            out["init_s"][0], out["ready_at"][0], self.init_s = self.init_s, self.ready_at, None
        out["call_s"] = np.zeros(len(out["id"]), np.float64)  # time in this call (model + host)
        out["done_at"] = np.zeros(len(out["id"]), np.float64)
        if len(out["id"]):
            out["call_s"][0], out["done_at"][0] = time.perf_counter() - t0, time.time()
        return out

    def _one(self, ids: np.ndarray, pieces: np.ndarray, meta: dict) -> dict:
        ids, pieces = (
            np.asarray(ids, np.int32),
            np.asarray(pieces, np.int32).reshape(-1, len(PIECE_COLUMNS)),
        )
        seqs, d = meta["seqs"], self.model.config.d_model
        n = len(pieces)
        out = {
            "shard": [],
            "id": [],
            "length": [],
            "win_start": [],
            "n_win": [],
            "error": [],
            "note": [],
            "tokens": [],
            "slots": [],
            "model_s": [],
        }
        pooled = np.zeros((n, d), np.float32)
        residues: list[np.ndarray] = []
        if n:
            lens = np.asarray([s[2] for s in seqs])
            nwin = np.asarray([s[3] for s in seqs])
            lead = self.spec.num_prefix  # ankh3's [NLU]: seen by the model, not a residue
            seg, pos, wt = layout(
                ids, pieces, lens, nwin, self.spec.max_length, self.spec.window_overlap, lead
            )
            t0 = time.perf_counter()
            p, h = self.encode(ids, seg, pos, wt)
            p = np.asarray(p)  # [B, S, e]
            h = np.asarray(h) if self.per_residue else None  # [B, L, e]
            model_s = time.perf_counter() - t0
            for k, (row, start, ntok, s, win, sid) in enumerate(pieces.tolist()):
                pooled[k] = p[row, sid - 1]
                shard, ident, length, nw, note = seqs[s]
                out["shard"].append(shard), out["id"].append(ident), out["length"].append(length)
                out["win_start"].append(win), out["n_win"].append(nw), out["error"].append("")
                out["note"].append(note if win == 0 else "")
                out["tokens"].append(ntok), out["slots"].append(ids.size if k == 0 else 0)
                out["model_s"].append(model_s if k == 0 else 0.0)
                if h is not None:
                    residues.append(h[row, start + lead : start + ntok - 1])
        for shard, ident, why in meta["errors"]:
            out["shard"].append(shard), out["id"].append(ident), out["length"].append(0)
            out["win_start"].append(0), out["n_win"].append(1), out["error"].append(why)
            out["note"].append(""), out["tokens"].append(0), out["slots"].append(0)
            out["model_s"].append(0.0)
            residues.append(np.zeros((0, d), np.float32))
        pooled = np.concatenate([pooled, np.zeros((len(meta["errors"]), d), np.float32)])
        res = {
            k: np.asarray(
                v,
                object
                if k in ("shard", "id", "error", "note")
                else np.float64
                if k == "model_s"
                else np.int64,
            )
            for k, v in out.items()
        }
        res["pooled"] = pooled
        if self.per_residue:
            res["residues"] = residues
        return res
