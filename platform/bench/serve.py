"""``python -m jobs.benchmark serve``: embedding throughput and latency under concurrent load.

Measures, in one run and on the same model and real proteins:
1. offline: ``Ankh.embed`` over the sequence set (after compiles; before and after the load,
   the faster counts) -> tokens/s;
2. served: a local Ray Serve (embedding deployment + HTTP ingress on a free loopback port),
   ``--clients`` threads posting ``--per-request`` sequences each, back to back, for
   ``--duration`` s over keep-alive connections -> requests/s, sequences/s, tokens/s, p50/p99.
Prints one JSON line; ``ratio_vs_offline`` = served tokens/s / offline tokens/s (target >= 0.8).
Served tokens/s is the sustained rate between the first and the last completed request
(``tokens_per_s_wall`` also counts the first round's wait and the last round's drain).
Tokens are counted the same way on both sides (residues + ``</s>``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time
from collections import Counter

import numpy as np

from ankh.batching import DEFAULT_BATCH_TOKENS
from ankh_platform.core import cli as _cli  # the --model / --output flags every job shares
from ankh_platform.core.samples import protein_parquet


def _proteins(n: int, max_len: int) -> list[str]:
    import pyarrow.parquet as pq

    seqs = pq.read_table(protein_parquet(), columns=["sequence"]).column(0).to_pylist()
    return [s for s in seqs if 1 <= len(s) <= max_len][:n]


def offline_tokens_per_s(model, seqs: list[str], batch_tokens: int) -> float:
    t0 = time.perf_counter()
    model.embed(seqs, batch_tokens=batch_tokens)
    return sum(len(s) + 1 for s in seqs) / (time.perf_counter() - t0)


def _client(
    port: int,
    batches: list[list[str]],
    start: int,
    stop_at: float,
    out: list[tuple[int, float, int]],
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    i = start
    while time.perf_counter() < stop_at:
        seqs = batches[i % len(batches)]
        i += 1
        body = json.dumps({"sequences": seqs})
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/v1/embed", body, {"content-type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            status = resp.status
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            status = 0
        tokens = sum(len(s) + 1 for s in seqs) if status == 200 else 0
        done = time.perf_counter()
        out.append((status, done - t0, tokens, done, start))
    conn.close()


def steady_tokens_per_s(ok: list[tuple]) -> float | None:
    """Sustained tokens/s: per client, its tokens after its first reply over the time to its last.

    Dynamic batching makes requests complete in rounds (one server batch serves every request
    in flight), so wall-clock throughput over a short window is dominated by the first round's
    wait and the last round's drain. Each client sends back to back, so the requests it
    completes after its first reply were all processed between its first and last reply; the
    sum of those per-client rates is the sustained throughput. Rows: (status, latency, tokens,
    done_time, client).
    """
    by_client: dict[int, list[tuple[float, int]]] = {}
    for r in ok:
        by_client.setdefault(r[4], []).append((r[3], r[2]))
    rates = []
    for done in by_client.values():
        done.sort()
        if len(done) >= 2 and done[-1][0] > done[0][0]:
            rates.append(sum(t for _, t in done[1:]) / (done[-1][0] - done[0][0]))
    return sum(rates) if rates else None


def load(port: int, batches: list[list[str]], clients: int, duration: float) -> dict:
    results: list[tuple[int, float, int, float, int]] = []
    stop_at = time.perf_counter() + duration
    threads = [
        threading.Thread(target=_client, args=(port, batches, k * 7, stop_at, results))
        for k in range(clients)
    ]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = [r for r in results if r[0] == 200]
    lat = np.array([r[1] for r in ok]) * 1e3
    per_req = len(batches[0])
    return {
        "requests": len(results),
        "ok": len(ok),
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(ok) / wall, 2),
        "sequences_per_s": round(len(ok) * per_req / wall, 2),
        "tokens_per_s_wall": round(sum(r[2] for r in ok) / wall, 1),
        "tokens_per_s": round(steady_tokens_per_s(ok) or 0.0, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if ok else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if ok else None,
        "status_counts": {str(k): v for k, v in sorted(Counter(r[0] for r in results).items())},
    }


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m jobs.benchmark serve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _cli.add(
        ap,
        "--model",
        _cli.model_flag(None, "default small (random weights)", aliases=("--checkpoint",)),
        default="small",
    )
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--sequences", type=int, default=256, help="real proteins in the set")
    ap.add_argument("--max-len", type=int, default=512, help="longest protein used (residues)")
    ap.add_argument("--per-request", type=int, default=8, help="sequences per HTTP request")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument(
        "--duration", type=float, default=90.0, help="seconds of load (several server batch rounds)"
    )
    ap.add_argument("--batch-tokens", type=int, default=DEFAULT_BATCH_TOKENS)
    ap.add_argument("--row-growth", type=int, default=4, help="compiled batch rows 1, g, g^2..")
    ap.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray")
    return ap


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)

    import ray
    from ray import serve

    import ankh
    from ankh.batching import SERVE_MIN_LENGTH, sequence_ladder
    from ankh_platform.core.runtime import init_ray
    from ankh_platform.serve.app import build_app

    seqs = _proteins(args.sequences, args.max_len)
    model = ankh.load(args.model, dtype=args.dtype)
    model.embed(seqs, batch_tokens=args.batch_tokens)  # compiles every shape this set needs
    off_before = offline_tokens_per_s(model, seqs, args.batch_tokens)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(seqs))
    batches = [
        [seqs[j] for j in order[i : i + args.per_request]]
        for i in range(0, len(order) - args.per_request + 1, args.per_request)
    ]
    port = _free_port()
    init_ray(num_cpus=args.num_cpus, log_to_driver=False, object_store_memory=300_000_000)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        cfg = {
            "checkpoint": args.model,
            "dtype": args.dtype,
            "generate": {"enabled": False},
            "embed": {
                "batch_tokens": args.batch_tokens,
                "num_cpus": 1,
                "length_buckets": sequence_ladder(args.max_len, SERVE_MIN_LENGTH),
                "row_growth": args.row_growth,
                "max_ongoing_requests": max(64, 2 * args.clients),
                "max_batch_size": 512,
                "per_residue": False,
            },
            "ingress": {"num_cpus": 0},
            "limits": {"max_sequences": max(64, args.per_request), "max_length": args.max_len},
        }
        t0 = time.perf_counter()
        serve.run(build_app(cfg), name="ankh", route_prefix="/")
        startup = time.perf_counter() - t0
        load(port, batches[:2], 2, 2.0)  # connections, first requests
        served = load(port, batches, args.clients, args.duration)
    finally:
        serve.shutdown()
        ray.shutdown()
    # Offline again after the load: on a shared machine the faster of the two is the reference
    # (the conservative choice for the ratio).
    off_after = offline_tokens_per_s(model, seqs, args.batch_tokens)
    off = max(off_before, off_after)
    print(
        json.dumps(
            {
                "benchmark": "serve",
                "checkpoint": args.model,
                "dtype": args.dtype,
                "clients": args.clients,
                "per_request": args.per_request,
                "duration_s": args.duration,
                "sequences_in_set": len(seqs),
                "mean_length": round(float(np.mean([len(s) for s in seqs])), 1),
                "serve_startup_s": round(startup, 1),
                **served,
                "offline_tokens_per_s": round(off, 1),
                "offline_tokens_per_s_before_after": [round(off_before, 1), round(off_after, 1)],
                "ratio_vs_offline": round(served["tokens_per_s"] / off, 3),
                "target_ratio": 0.8,
            }
        )
    )


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
