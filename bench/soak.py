"""`make soak`: steady mixed load on the stack for SOAK_S seconds (30 minutes by default)
while the memory of the web and worker process trees is sampled; prints the samples and
the growth between the start (after a warm-up) and the end.

Load (open loop, Python generator): submits of echo jobs, reads of jobs, single-event
appends, each at SOAK_RATE/3 per second (SOAK_RATE 60 by default), and batches of 1000
events at SOAK_BATCH_RATE per second (0.5). Growth compares the mean of the samples in the
10 % of the run after the warm-up (20 % of the run, at least 2 and at most 5 minutes) with
the mean of the last 10 %; the target is < 5 % of web + worker PSS. The PSS trend after the
warm-up (MB/min) tells a one-off step (pages a forked child copies once) from a leak.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from bench import open_loop
from bench.harness import MB, BenchStack, bench_stack, env_float, postgres_admin_url, tree_memory
from bench.load import RequestSpec, percentile
from bench.open_loop import Sent
from bench.report import machine
from bench.scenarios import BATCH_EVENTS, STREAMS

MAX_SOAK_S = 24 * 3600.0


def main() -> int:
    duration = min(env_float("SOAK_S", 1800), MAX_SOAK_S)
    rate = env_float("SOAK_RATE", 60)
    batch_rate = env_float("SOAK_BATCH_RATE", 0.5)
    every = env_float("SOAK_SAMPLE_S", max(1.0, min(10.0, duration / 60)))
    out = Path(os.environ.get("BENCH_OUT") or tempfile.mkdtemp(prefix="conveyor-soak-"))
    say(f"machine: {machine()}")
    say(f"{duration:.0f} s at {rate:.0f} req/s + {batch_rate} batches/s; logs in {out}")
    with postgres_admin_url() as admin_url, bench_stack(admin_url, "soak", out / "logs") as bs:
        api = bs.start_web()
        bs.start_worker()
        api.sign_up()
        auth = (("Authorization", f"Bearer {api.token}"),)
        with_body = (*auth, ("Content-Type", "application/json"))
        agent_id = api.create_echo_agent(delay_ms=0)
        job_body = json.dumps({"agent_id": agent_id, "input": {"text": "soak"}}).encode()
        ids = [api.submit(agent_id, "seed").body["id"] for _ in range(100)]
        event = {"type": "soak.tick", "data": {"text": "x" * 100}}
        batch = [{"stream": f"soak-batch-{k % 50}", **event} for k in range(BATCH_EVENTS)]
        specs = {
            "submit": (RequestSpec("POST", ("/v1/jobs",), job_body, with_body), rate / 3),
            "get": (RequestSpec("GET", tuple(f"/v1/jobs/{i}" for i in ids), None, auth), rate / 3),
            "append": (
                RequestSpec(
                    "POST",
                    tuple(f"/v1/streams/soak-{k}/events" for k in range(STREAMS)),
                    json.dumps({"events": [event]}).encode(),
                    with_body,
                ),
                rate / 3,
            ),
            "batch": (
                RequestSpec(
                    "POST", ("/v1/events/batch",), json.dumps({"events": batch}).encode(), with_body
                ),
                batch_rate,
            ),
        }
        results: dict[str, list[Sent]] = {}

        def offer(name: str) -> None:
            spec, per_s = specs[name]
            results[name] = open_loop.offer(
                bs.port, spec, rate=per_s, duration_s=duration, connections=16
            )

        threads = [threading.Thread(target=offer, args=(n,), daemon=True) for n in specs]
        for thread in threads:
            thread.start()
        samples = sample_until(bs, threads, every, duration)
        for thread in threads:
            thread.join(60)
        backlog = int(bs.redis().llen("agents"))
        bs.stack.assert_running()
    print(report(samples, results, duration, backlog), flush=True)
    if os.environ.get("BENCH_KEEP_LOGS", "0") != "1":
        shutil.rmtree(out / "logs", ignore_errors=True)
    return 0


def sample_until(
    bs: BenchStack, threads: list[threading.Thread], every: float, duration: float
) -> list[tuple[float, dict[str, tuple[int, int]]]]:
    samples = []
    began = time.monotonic()
    next_print = 0.0
    while any(t.is_alive() for t in threads) and time.monotonic() - began < duration + 120:
        now = time.monotonic() - began
        memory = {name: tree_memory(pid) for name, pid in bs.pids().items()}
        samples.append((now, memory))
        if now >= next_print:
            say(f"{now:6.0f} s  " + "  ".join(
                f"{name} RSS {rss / MB:,.0f} MB PSS {pss / MB:,.0f} MB"
                for name, (rss, pss) in sorted(memory.items())
            ))  # fmt: skip
            next_print = now + 60
        time.sleep(every)
    return samples


def report(
    samples: list[tuple[float, dict[str, tuple[int, int]]]],
    results: dict[str, list[Sent]],
    duration: float,
    backlog: int,
) -> str:
    warmup = min(max(0.2 * duration, 120.0), 300.0, 0.5 * duration)
    window = 0.1 * duration
    early = [m for t, m in samples if warmup <= t < warmup + window]
    late = [m for t, m in samples if duration - window <= t <= duration]
    lines = ["", f"Soak: {duration:.0f} s, {len(samples)} samples; {machine()}", ""]
    lines.append("| tree | start MB (RSS / PSS) | end MB (RSS / PSS) | growth RSS | growth PSS |")
    lines.append("|---|---|---|---|---|")
    growths = {}
    for name in ("web", "worker", "total"):
        start = _mean(early, name)
        end = _mean(late, name)
        rss_growth = (end[0] - start[0]) / start[0] * 100 if start[0] else math.nan
        pss_growth = (end[1] - start[1]) / start[1] * 100 if start[1] else math.nan
        growths[name] = pss_growth
        lines.append(
            f"| {name} | {start[0] / MB:,.0f} / {start[1] / MB:,.0f} | "
            f"{end[0] / MB:,.0f} / {end[1] / MB:,.0f} | {rss_growth:+.1f} % | {pss_growth:+.1f} % |"
        )
    lines += ["", "trend after the warm-up (least squares over the samples, PSS): " + ", ".join(
        f"{name} {_slope(samples, name, warmup):+.2f} MB/min" for name in ("web", "worker", "total")
    )]  # fmt: skip
    holds = growths["total"] < 5
    lines += [
        "",
        f"target: web + worker growth < 5 % (PSS): {'holds' if holds else 'DOES NOT HOLD'}",
    ]
    lines += ["", "| load | offered/s | answered | statuses | p50 ms | p95 ms | p99 ms |"]
    lines.append("|---|---|---|---|---|---|---|")
    for name, sent in results.items():
        statuses = Counter(s.status for s in sent)
        latency = [(s.answered - s.intended) * 1000 for s in sent if s.status]
        lines.append(
            f"| {name} | {len(sent) / duration:,.1f} | {len(latency)} | {dict(statuses)} | "
            f"{percentile(latency, 50):,.1f} | {percentile(latency, 95):,.1f} | "
            f"{percentile(latency, 99):,.1f} |"
        )
    lines.append(f"\nagents queue at the end: {backlog} messages waiting")
    return "\n".join(lines)


def _slope(
    samples: list[tuple[float, dict[str, tuple[int, int]]]], name: str, after: float
) -> float:
    """MB per minute of the tree's PSS over the samples after `after` seconds: a step
    (pages copied once after fork) flattens out, a leak keeps a slope."""
    names = ("web", "worker") if name == "total" else (name,)
    points = [(t / 60, sum(m.get(n, (0, 0))[1] for n in names) / MB) for t, m in samples
              if t >= after]  # fmt: skip
    if len(points) < 2:
        return math.nan
    mean_t = sum(t for t, _ in points) / len(points)
    mean_v = sum(v for _, v in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / spread if spread else math.nan


def _mean(samples: list[dict[str, tuple[int, int]]], name: str) -> tuple[float, float]:
    """Mean (RSS, PSS) of tree `name` ("total": web + worker) over `samples`."""
    if not samples:
        return math.nan, math.nan
    names = ("web", "worker") if name == "total" else (name,)
    rss = [sum(m.get(n, (0, 0))[0] for n in names) for m in samples]
    pss = [sum(m.get(n, (0, 0))[1] for n in names) for m in samples]
    return sum(rss) / len(rss), sum(pss) / len(pss)


def say(message: str) -> None:
    print(f"soak: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
