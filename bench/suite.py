"""`make bench`: start the stack on real PostgreSQL and Redis, run every scenario, print the
table (see bench/README.md). Settings come from BENCH_* environment variables.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from bench import batch_ingest, load, profiling, scenarios
from bench.harness import Sampler, bench_stack, env_float, postgres_admin_url
from bench.load import RequestSpec
from bench.report import LEGEND, Row, machine, table, to_json


def main() -> int:
    out = Path(os.environ.get("BENCH_OUT") or tempfile.mkdtemp(prefix="conveyor-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    wrk = load.ensure_wrk()
    say(f"machine: {machine()}")
    say(f"load generator: {wrk or 'python (wrk not found; figures are lower bounds)'}")
    say(f"logs and results in {out}")
    rows: list[Row] = []
    profiles: dict[str, str] = {}
    started = time.monotonic()
    with postgres_admin_url() as admin_url:
        with bench_stack(admin_url, "bench", out / "logs") as stack:
            sampler = Sampler(stack)
            try:
                bench = scenarios.Bench(stack, sampler, wrk)
                run_all(bench, rows, profiles, out)
            except Exception:
                say("a scenario failed; the processes' logs are in " + str(out / "logs"))
                print(table(rows), flush=True)
                raise
            finally:
                sampler.close()
        if wanted(selected(), "batch"):
            say("in-process batch ingestion (bench/batch_ingest.py)")
            rows.append(in_process_batch(admin_url))
    cpu_ratios(rows)
    rows.append(memory_row(rows))
    text = "\n".join([
        "", f"Conveyor benchmark, {time.strftime('%Y-%m-%d %H:%M:%S')}, "
        f"{time.monotonic() - started:.0f} s", machine(), "", table(rows), "", LEGEND,
    ])  # fmt: skip
    for name, summary in profiles.items():
        text += f"\n\nProfile during {name} (py-spy):\n{summary}"
    print(text, flush=True)
    (out / "results.txt").write_text(text + "\n")
    (out / "results.json").write_text(to_json(rows) + "\n")
    say(f"results in {out}/results.txt")
    return 0


def run_all(bench: scenarios.Bench, rows: list[Row], profiles: dict[str, str], out: Path) -> None:
    stack = bench.stack
    api = stack.start_web()
    api.sign_up()
    assert api.token
    bench.token = api.token
    submit_agent = bench.agent(delay_ms=0)

    only = selected()
    step("http ceiling", rows, lambda: scenarios.http_ceiling(bench))
    if wanted(only, "celery ceiling", "end-to-end"):
        step("celery ceiling", rows, lambda: scenarios.celery_ceiling(bench))
    # get reads the jobs that submit leaves behind, and overload offers twice its rate.
    if wanted(only, "submit", "get", "overload"):
        step("submit", rows, lambda: scenarios.submit(bench, submit_agent))
    if wanted(only, "get"):
        step("get", rows, lambda: scenarios.get(bench))
    if wanted(only, "append"):
        step("append", rows, lambda: scenarios.append(bench))
    # Again, after the web scenarios: the ratios use the mean of both readings.
    step("http ceiling (again)", rows,
         lambda: scenarios.http_ceiling(bench, "http ceiling (again)"))  # fmt: skip
    refresh_ratios(bench, rows)
    if os.environ.get("BENCH_PROFILE", "0") == "1" and wanted(only, "submit", "get"):
        profile(bench, submit_agent, profiles, out)

    stack.redis().delete("agents")  # messages of jobs the web scenarios left queued
    stack.start_worker()
    # pickup offers half the end-to-end rate.
    if wanted(only, "end-to-end", "pickup"):
        step("end-to-end", rows, lambda: scenarios.end_to_end(bench))
    if os.environ.get("BENCH_PROFILE", "0") == "1" and wanted(only, "end-to-end"):
        profile_worker(bench, profiles, out)
    if wanted(only, "pickup"):
        step("pickup", rows, lambda: scenarios.pickup(bench))
    if wanted(only, "batch"):
        step("batch ingestion", rows, lambda: scenarios.batch_api(bench))
    if wanted(only, "overload"):
        step("overload", rows, lambda: scenarios.overload(bench, submit_agent))
    stack.stack.assert_running()


def selected() -> frozenset[str] | None:
    """`BENCH_ONLY=submit,get` runs those scenarios (and what they build on) and the HTTP
    ceiling; unset, everything runs."""
    names = os.environ.get("BENCH_ONLY", "").strip()
    return frozenset(n.strip() for n in names.split(",") if n.strip()) if names else None


def wanted(only: frozenset[str] | None, *names: str) -> bool:
    return only is None or any(name in only for name in names)


def step(name: str, rows: list[Row], run: object) -> None:
    say(f"{name} ...")
    row = run()  # type: ignore[operator]
    rows.append(row)
    say(f"  {row.rate:,.0f} {row.unit}, p95 {row.p95:,.1f} ms, errors {row.errors}")


def refresh_ratios(bench: scenarios.Bench, rows: list[Row]) -> None:
    """Ratios to the HTTP ceiling use the mean of its readings before and after."""
    ceiling = bench.http_ceiling
    for row in rows:
        if row.ratio_of == "http" and not row.scenario.startswith("http ceiling"):
            row.ratio = row.rate / ceiling
            if row.scenario.startswith("submit"):
                row.holds = row.ratio >= 0.40 and row.p95 < 50 and row.errors == 0
            elif row.scenario.startswith("get"):
                row.holds = row.ratio >= 0.60
    first, *rest = bench.http_ceilings
    for row in rows:
        if row.scenario.startswith("http ceiling"):
            row.ratio, row.ratio_of = row.rate / ceiling, "mean"
    if rest:
        drift = (rest[-1] - first) / first * 100
        rows[0].notes.append(f"ratios use the mean of both readings ({ceiling:,.0f} req/s); "
                             f"drift {drift:+.0f} %")  # fmt: skip


def cpu_ratios(rows: list[Row]) -> None:
    """Beside each ratio, the same ratio computed from CPU per operation (the ceiling's web
    CPU per request over the scenario's; for jobs, the worker's): on a 2-core machine
    whose Python processes are CPU-bound, that is roughly the throughput ratio a quiet
    machine would show, and the machine's other load moves it much less."""
    http = [r.cpu_ms["web"] for r in rows if r.scenario.startswith("http ceiling") and r.cpu_ms]
    celery = [r.cpu_ms["worker"] for r in rows if r.scenario.startswith("celery") and r.cpu_ms]
    for row in rows:
        if not row.cpu_ms or row.scenario.startswith(("http ceiling", "celery")):
            continue
        if row.ratio_of == "http" and http and row.cpu_ms.get("web"):
            base, own, what = sum(http) / len(http), row.cpu_ms["web"], "web CPU/request"
        elif row.ratio_of == "celery" and celery and row.cpu_ms.get("worker"):
            base, own, what = celery[0], row.cpu_ms["worker"], "worker CPU/job"
        else:
            continue
        row.notes.append(f"by CPU: {base / own:.2f} ({what} {own:.2f} ms vs {base:.2f} ms "
                         "for the ceiling)")  # fmt: skip


def profile(bench: scenarios.Bench, agent_id: str, profiles: dict[str, str], out: Path) -> None:
    """Extra runs of submit and get under py-spy; their figures stay out of the table."""
    if profiling.py_spy() is None:
        say("BENCH_PROFILE=1 but py-spy is not installed (pip install py-spy); no profiles")
        return
    ids = [str(r[0]) for r in bench.stack.db.rows("SELECT id FROM jobs LIMIT 1000")]
    runs = {
        "submit (web)": bench.job_spec(agent_id),
        "get (web)": RequestSpec("GET", tuple(f"/v1/jobs/{i}" for i in ids), None, bench.headers()),
    }
    duration = env_float("BENCH_PROFILE_S", bench.duration_s)
    web_pid = bench.stack.stack.processes["web"].pid
    for name, spec in runs.items():
        say(f"profiling {name} for {duration:.0f} s ...")
        path = out / f"profile-{name.split()[0]}.txt"
        with scenarios.drained(bench) if name.startswith("submit") else contextlib.nullcontext():
            recorder = profiling.record(web_pid, path, duration)
            time.sleep(0.5)
            result = bench.run_http(spec, duration)
            assert recorder is not None
            _, err = recorder.communicate(timeout=duration + 60)
        if not path.is_file():
            profiles[name] = f"  py-spy failed: {err.decode(errors='replace')[-500:]}"
            continue
        profiles[name] = (
            f"  (under py-spy: {result.rate:,.0f} req/s; raw stacks in {path})\n"
            + profiling.summary(path.read_text())
        )


def profile_worker(bench: scenarios.Bench, profiles: dict[str, str], out: Path) -> None:
    """An extra run of echo jobs with the worker under py-spy; then wait for its jobs."""
    if profiling.py_spy() is None:
        return
    duration = env_float("BENCH_PROFILE_S", bench.duration_s)
    agent_id = bench.agent(delay_ms=0)
    path = out / "profile-worker.txt"
    say(f"profiling the worker for {duration:.0f} s ...")
    recorder = profiling.record(bench.stack.stack.processes["worker"].pid, path, duration)
    assert recorder is not None
    result = load.closed_loop(bench.port, bench.job_spec(agent_id), connections=4,
                              duration_s=duration)  # fmt: skip
    _, err = recorder.communicate(timeout=duration + 60)
    scenarios._wait_jobs(bench, agent_id, result.statuses.get(202, 0), 120, "finished_at")
    if not path.is_file():
        profiles["echo jobs (worker)"] = f"  py-spy failed: {err.decode(errors='replace')[-500:]}"
        return
    profiles["echo jobs (worker)"] = (
        f"  (under py-spy; raw stacks in {path})\n" + profiling.summary(path.read_text())
    )


def in_process_batch(admin_url: str) -> Row:
    result = batch_ingest.measure(admin_url)
    row = Row(
        "batch ingestion in-process (worker code path)", result.events_per_s, "events/s",
        result.p50_ms, result.p95_ms, math.nan, errors=0,
        ratio=result.events_per_s / 20_000, ratio_of="target", target=">= 20,000 events/s",
        holds=result.events_per_s >= 20_000,
    )  # fmt: skip
    row.notes.append(f"{result.total} events in batches of {result.batch_size}, one process, "
                     "no HTTP and no Celery; latency per batch")  # fmt: skip
    return row


def memory_row(rows: list[Row]) -> Row:
    """Peak web + worker memory in the scenarios that ran the real worker, judged on PSS
    (shared pages divided among the processes sharing them), with summed RSS beside it."""
    loaded = [r for r in rows if not math.isnan(r.web_pss_mb + r.worker_pss_mb)
              and not r.scenario.startswith("celery")]  # fmt: skip
    worst = max(loaded, key=lambda r: r.web_pss_mb + r.worker_pss_mb, default=None)
    row = Row("memory: web + worker peak", math.nan, "", errors=None, target="< 512 MB total")
    if worst:
        pss = worst.web_pss_mb + worst.worker_pss_mb
        rss = worst.web_mb + worst.worker_mb
        row.web_mb, row.worker_mb, row.holds = worst.web_mb, worst.worker_mb, pss < 512
        row.notes.append(
            f"{pss:,.0f} MB PSS (web {worst.web_pss_mb:,.0f} + worker {worst.worker_pss_mb:,.0f})"
            f" during {worst.scenario}; summed RSS {rss:,.0f} MB counts pages shared after "
            "fork once per process. Growth under steady load: make soak"
        )
    return row


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
