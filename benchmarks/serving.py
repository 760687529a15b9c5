"""HTTP load against each runner vs the in-process service.

    python benchmarks/serving.py [--bundle artifacts/bundles/amazon_book] [--seconds 8]
        [--runners local,ray-fused,ray-chained] [--clients 1,8,32]

For each runner (local = uvicorn in one process, local-2w in two worker processes; Ray Serve
fused and chained topologies)
starts `recsys serve` in a subprocess on loopback and drives it with 1, 8 and 32 concurrent
clients (aiohttp, bounded by time), per endpoint: p50/p95/p99 latency, RPS, errors. The same
calls made on the in-process `RecommendationService` show what HTTP adds. Prints a table,
writes benchmarks/results/serving.json. `--endpoints user` loads only user recommendations;
`--profile flamegraph` (or `raw`) records the local runner's server with py-spy under each
load, into benchmarks/results/profiles/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from recsys.bundle.reader import load_bundle
from recsys.report import print_table, write_json
from recsys.serving.local import spawn_server
from recsys.serving.service import RecommendationService


def summarise(
    latencies: list[float], errors: int, seconds: float, fallbacks: int = 0
) -> dict[str, float]:
    ms = np.asarray(latencies) * 1000 if latencies else np.zeros(1)
    return {
        "rps": len(latencies) / seconds,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "requests": len(latencies),
        "errors": errors,
        "fallbacks": fallbacks,
    }


CLIENT = "aiohttp"  # --client: aiohttp (the default) or httpx (the figures before 2026-12-01)


async def load(
    base: str, make: Any, clients: int, seconds: float, headers: dict[str, str] | None = None
) -> dict[str, float]:
    """``clients`` concurrent callers, each sending its next request when the last is answered,
    for ``seconds``. The client shares the 2 cores with the server: ``client_cpu_ms`` is this
    process's CPU per answered request (aiohttp spends less than httpx, docs/results);
    :func:`cpu_use` adds the server's. On 2 cores, 400 RPS leaves 5 ms for both."""
    import aiohttp

    latencies: list[float] = []
    errors = fallbacks = 0
    deadline = time.perf_counter() + seconds
    transport = (aiohttp.ClientError, httpx.HTTPError, asyncio.TimeoutError)

    async def call(session: Any, method: str, path: str, body: Any) -> tuple[int, bytes]:
        if isinstance(session, httpx.AsyncClient):
            response = await session.request(method, path, json=body)
            return response.status_code, response.content
        async with session.request(method, base + path, json=body) as response:
            return response.status, await response.read()

    async def worker(session: Any) -> None:
        nonlocal errors, fallbacks
        while time.perf_counter() < deadline:
            method, path, body = make()
            started = time.perf_counter()
            try:
                status, payload = await call(session, method, path, body)
            except transport:  # a transport error is a failed request too
                errors += 1
                continue
            if 200 <= status < 300:
                latencies.append(time.perf_counter() - started)
                # Timeouts and stage errors answer 200 from popularity: count them apart.
                meta = json.loads(payload).get("metadata") or {}
                fallbacks += meta.get("fallback_reason") in ("timeout", "stage_error")
            else:
                errors += 1

    session: Any
    if CLIENT == "httpx":
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        session = httpx.AsyncClient(base_url=base, timeout=30, limits=limits, headers=headers)
    else:
        connector = aiohttp.TCPConnector(limit=clients)
        timeout = aiohttp.ClientTimeout(total=30)
        session = aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers)
    async with session:
        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker(session) for _ in range(clients)))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    row = summarise(latencies, errors, elapsed, fallbacks)
    row["client_cpu_ms"] = 1000 * cpu / max(1, len(latencies))
    return row


def scrape(base: str) -> dict[str, float]:
    """``*_sum`` and ``*_count`` series of the server's Prometheus metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{base}/metrics").text):
        for sample in family.samples:
            if sample.name.endswith(("_sum", "_count")):
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


def server_side(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Mean server-side time per request over a load window, from the metrics' deltas:
    ``app_ms`` inside the app (middleware to response), ``service_ms`` the service call,
    ``retrieval_ms``/``ranking_ms`` the model stages as the service saw them."""

    def mean(prefix: str, match: str) -> float:
        keys = [k for k in after if k.startswith(prefix) and match in k]
        total = sum(after[k] - before.get(k, 0.0) for k in keys if "_sum{" in k)
        count = sum(after[k] - before.get(k, 0.0) for k in keys if "_count{" in k)
        return 1000 * total / count if count else 0.0

    return {
        "app_ms": mean("recsys_request_latency_seconds", "endpoint=/recommendations"),
        "service_ms": mean("recsys_service_latency_seconds", ""),
        "retrieval_ms": mean("recsys_stage_latency_seconds", "stage=retrieval"),
        "ranking_ms": mean("recsys_stage_latency_seconds", "stage=ranking"),
    }


# the response cache is off everywhere here (benchmarks/live.py measures it)
OPEN = ["auth.enabled=false", "rate_limits.enabled=false", "cache.enabled=false"]
RUNNERS = {
    "local": ["engine=local", *OPEN],
    # two server processes on the port (`workers=2`; the cache is off, so no Redis is needed)
    "local-2w": ["engine=local", "workers=2", *OPEN],
    "local-3w": ["engine=local", "workers=3", *OPEN],
    # exploration off (`recsys serve` gives it 10 % of each list): what the slots cost
    "local-noexplore": ["engine=local", "exploration.share=0", *OPEN],
    # the product default: bearer token checked and rate limit counted on every request
    "local-secure": ["engine=local", "rate_limits.default=1000000/minute", "cache.enabled=false"],
    "ray-fused": ["engine=ray", "ray.topology=fused", *OPEN],
    "ray-chained": ["engine=ray", "ray.topology=chained", *OPEN],
    # Serve's Python proxy instead of HAProxy (the default where haproxy is installed)
    "ray-fused-proxy": ["engine=ray", "ray.topology=fused", "ray.haproxy=false", *OPEN],
    "ray-chained-proxy": ["engine=ray", "ray.topology=chained", "ray.haproxy=false", *OPEN],
}
BENCH_SECRET = "benchmark-only-secret-0123456789abcdef"


def profiler(pid: int, seconds: float, out: Path, fmt: str) -> subprocess.Popen[bytes]:
    """py-spy sampling ``pid`` (every thread, 100 Hz) for ``seconds``: an SVG flame graph
    (``fmt="flamegraph"``) or collapsed stacks (``raw``) at ``out``; ``-gil`` after either
    samples only the thread holding the GIL (where a GIL-bound server's CPU goes, without
    the threads waiting for it)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).with_name("py-spy")
    fmt, _, gil = fmt.partition("-")
    command = [str(spy), "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "100"]
    command += ["--gil"] if gil else []
    command += ["--threads", "--subprocesses", "--nonblocking", "-f", fmt, "-o", str(out)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def tree_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) used so far by process ``pid`` and each of its live
    descendants (a multi-worker server's workers, Ray's processes), by process id."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    out = {}
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        out[proc.pid] = times.user + times.system
    return out


def cpu_use(
    before: dict[int, float], after: dict[int, float], seconds: float, served: int
) -> dict[str, Any]:
    """The server's CPU per answered request, and the busiest processes' shares of a core
    (``worker_cores``, e.g. "0.86/0.52": how evenly the clients' connections landed on the
    workers)."""
    used = {pid: after[pid] - before.get(pid, 0.0) for pid in after}
    busy = sorted((u / seconds for u in used.values() if u / seconds >= 0.05), reverse=True)
    return {
        "server_cpu_ms": 1000 * sum(used.values()) / max(1, served),
        "worker_cores": "/".join(f"{b:.2f}" for b in busy[:4]),
    }


def bench_runner(
    runner: str,
    bundle: str,
    endpoints: dict[str, Any],
    seconds: float,
    clients: str,
    profile: tuple[str, Path] | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, dict[str, float]]:
    """Start ``recsys serve`` with one runner in a subprocess, load it, stop it; with
    ``profile`` (format, folder) py-spy records the server under each load (local runner);
    ``env`` is added to the server's environment (``benchmarks/serving_ab.py``: the
    ``PYTHONPATH`` of an older commit's code)."""
    headers = {}
    if "auth.enabled=false" not in RUNNERS[runner]:
        from recsys.serving.auth import Authenticator

        token = Authenticator(secret=BENCH_SECRET).issue("bench", ["recs:read:any"], 3600)
        headers = {"Authorization": f"Bearer {token}"}
    server, base = spawn_server(
        [f"bundle={bundle}", *RUNNERS[runner], "stage_timeout_ms=1000"],
        {"OMP_NUM_THREADS": "1", "RECSYS_JWT_SECRET": BENCH_SECRET, **(env or {})},
    )
    rows: dict[str, dict[str, float]] = {}
    try:
        asyncio.run(load(base, endpoints["user"], 2, 2.0, headers))  # warm-up
        for n in (int(c) for c in clients.split(",")):
            for name, make in endpoints.items():
                key = f"{runner} {name} x{n}"
                before = scrape(base)
                spy = None
                if profile is not None and runner.startswith("local"):
                    ext = "svg" if profile[0].startswith("flamegraph") else "txt"
                    out = profile[1] / f"{runner}-{name}-x{n}.{ext}"
                    spy = profiler(server.pid, seconds, out, profile[0])
                cpu, started = tree_cpu(server.pid), time.perf_counter()
                rows[key] = asyncio.run(load(base, make, n, seconds, headers))
                elapsed = time.perf_counter() - started
                use = cpu_use(cpu, tree_cpu(server.pid), elapsed, int(rows[key]["requests"]))
                rows[key].update(use)
                if spy is not None:
                    spy.wait(timeout=60)
                rows[key].update(server_side(before, scrape(base)))
                print(key, rows[key], flush=True)
    finally:
        server.terminate()  # SIGTERM: the Ray runner shuts Ray down
        server.wait(timeout=60)
    return rows


def bench_torchserve(
    bundle: str, users: list[str], seconds: float, clients: str
) -> dict[str, dict[str, float]]:
    """The bundle exported as a TorchServe archive (`recsys export-torchserve`), served by a
    real TorchServe on loopback (one worker, token auth off), loaded with user requests."""
    import tempfile

    from recsys.serving.local import free_port
    from recsys.torchserve.archive import export
    from recsys.torchserve.server import running

    rng = random.Random(1)

    def make() -> tuple[str, str, Any]:
        return "POST", "/predictions/recsys", {"user_id": rng.choice(users), "limit": 10}

    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="recsys-ts-") as tmp:
        store = Path(tmp) / "store"
        export(bundle, store)
        ports = {k: free_port() for k in ("inference", "management", "metrics")}
        with running(store, Path(tmp) / "run", ports) as base:
            asyncio.run(load(base, make, 2, 2.0))  # warm-up
            for n in (int(c) for c in clients.split(",")):
                key = f"torchserve user x{n}"
                rows[key] = asyncio.run(load(base, make, n, seconds))
                print(key, rows[key], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", default="artifacts/bundles/amazon_book")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument(
        "--runners",
        default="local,local-secure,ray-fused,ray-chained",
        help="comma list of local, local-2w (workers=2), local-noexplore (exploration off), "
        "local-secure (auth + rate limit), "
        "ray-fused, ray-chained, "
        "ray-fused-proxy, ray-chained-proxy (Serve's Python proxy, not HAProxy), "
        "torchserve (the bundle exported to TorchServe; extra: torchserve)",
    )
    parser.add_argument("--clients", default="1,8,32", help="comma list of concurrencies")
    parser.add_argument(
        "--endpoints", default="user,similar,trending", help="comma list of user, similar, trending"
    )
    parser.add_argument(
        "--profile",
        choices=["flamegraph", "raw", "flamegraph-gil", "raw-gil"],
        help="py-spy the local runners' server under each load: SVG flame graphs or "
        "collapsed stacks in <out>/profiles/ (-gil: only the thread holding the GIL)",
    )
    parser.add_argument(
        "--client", choices=["aiohttp", "httpx"], default="aiohttp", help="the load's HTTP client"
    )
    args = parser.parse_args()
    global CLIENT
    CLIENT = args.client
    profile = (args.profile, Path(args.out) / "profiles") if args.profile else None
    bundle = load_bundle(args.bundle)
    rng = random.Random(0)
    users = bundle.histories.get_column("user_id").to_list()
    books = bundle.state.books.ids.to_list()
    endpoints = {
        "user": lambda: ("POST", f"/recommendations/users/{rng.choice(users)}", {"limit": 10}),
        "similar": lambda: ("POST", f"/recommendations/books/{rng.choice(books)}", {"limit": 10}),
        "trending": lambda: ("GET", "/recommendations/trending?limit=10", None),
    }
    endpoints = {k: v for k, v in endpoints.items() if k in args.endpoints.split(",")}
    rows: dict[str, dict[str, float]] = {}
    service = RecommendationService(bundle, stage_timeout_s=5.0)
    for name, call in (
        ("user", lambda: service.for_user(rng.choice(users), 10, [], None)),
        ("similar", lambda: service.similar(rng.choice(books), 10, None)),
    ):
        if name not in endpoints:
            continue
        latencies, deadline = [], time.perf_counter() + args.seconds / 2
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            call()
            latencies.append(time.perf_counter() - started)
        rows[f"in-process {name}"] = summarise(latencies, 0, args.seconds / 2)
    service.close()

    for runner in args.runners.split(","):
        if runner == "torchserve":  # the TorchServe export (#24): user requests only
            rows.update(bench_torchserve(args.bundle, users, args.seconds, args.clients))
            continue
        rows.update(
            bench_runner(runner, args.bundle, endpoints, args.seconds, args.clients, profile)
        )
    print_table(
        rows,
        [
            "rps",
            "p50_ms",
            "p99_ms",
            "mean_ms",
            "app_ms",
            "service_ms",
            "retrieval_ms",
            "ranking_ms",
            "errors",
            "fallbacks",
            "client_cpu_ms",
            "server_cpu_ms",
            "worker_cores",
        ],
        title=f"serving {bundle.version} on 2 cores (client in the same machine)",
    )
    bar: dict[str, Any] = {
        "errors": sum(r["errors"] for r in rows.values()),
        "fallbacks": sum(r["fallbacks"] for r in rows.values()),
    }
    for local in ("local", "local-2w"):
        if f"{local} user x8" in rows:
            at8, name = rows[f"{local} user x8"], local.replace("-", "_")
            bar[f"{name}_user_rps_x8"] = at8["rps"]
            bar[f"{name}_user_p99_ms_x8"] = at8["p99_ms"]
            bar[f"{name}_bar_met"] = at8["rps"] >= 400 and at8["p99_ms"] <= 40  # issue #20
    for n in (1, 8):
        plain, secure = rows.get(f"local user x{n}"), rows.get(f"local-secure user x{n}")
        if plain and secure:
            bar[f"auth_ratelimit_p50_ratio_x{n}"] = secure["p50_ms"] / plain["p50_ms"]
            bar[f"auth_ratelimit_rps_ratio_x{n}"] = secure["rps"] / plain["rps"]
    for n in (1, 8):
        plain, ts = rows.get(f"local user x{n}"), rows.get(f"torchserve user x{n}")
        if plain and ts:
            bar[f"torchserve_p50_vs_local_x{n}"] = ts["p50_ms"] / plain["p50_ms"]
            bar[f"torchserve_rps_vs_local_x{n}"] = ts["rps"] / plain["rps"]
    ray_rows = {k: v for k, v in rows.items() if k.startswith("ray") and " user " in k}
    at1 = [k for k in ray_rows if k.endswith(" x1")]
    if at1:
        best = min(at1, key=lambda k: ray_rows[k]["p50_ms"])
        bar["ray_best_user_p50_ms_x1"] = ray_rows[best]["p50_ms"]
        bar["ray_best_user_p50_runner"] = best
    if ray_rows:
        top = max(ray_rows, key=lambda k: ray_rows[k]["rps"])
        bar["ray_best_user_rps"] = ray_rows[top]["rps"]
        bar["ray_best_user_rps_runner"] = top
        local = rows.get("local user x8")
        for topology, share in (("fused", 0.75), ("chained", 0.5)):  # issue #20: of local
            at8 = rows.get(f"ray-{topology} user x8")
            if local and at8:
                bar[f"ray_{topology}_rps_vs_local_x8"] = at8["rps"] / local["rps"]
                bar[f"ray_{topology}_bar_met"] = at8["rps"] / local["rps"] >= share
    print_table({"bars": bar})
    print(f"written {write_json(Path(args.out) / 'serving.json', {'rows': rows, 'bar': bar})}")


if __name__ == "__main__":
    main()
