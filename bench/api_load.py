"""The API under load: requests per second and latency of status polls and job lists, beside /healthz (no
database: the ceiling of the HTTP stack) on the same server, at 1 to 400 concurrent clients, on SQLite and on
PostgreSQL, with a job training on the server's worker as in real use.

Two kinds of load. Closed loop (wrk): each client sends its next request as soon as the last is answered, which
measures the most the server can answer; by Little's law its latency is clients / rate, so at 100 clients any
rate under 2000/s puts even the median above 50 ms. Open loop: each client polls once a second, as
``vdc watch`` and a dashboard do, which measures what a user waits at that many clients. Every run is followed
by one request alone, to show the server answers at once when the load stops.

Needs ``wrk`` (Debian: ``apt-get install wrk``) and, for PostgreSQL, its server binaries; loopback only.

    python bench/api_load.py                  # both databases, 10 s a run
    python bench/api_load.py --databases sqlite --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.results import append_section, command_line, cpu_name
from tests.integration.conftest import PostgresServer, Serve, wait_for

CLIENTS = (1, 10, 100, 400)
OPEN_LOOP_CLIENTS = (100, 400)
UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _seconds(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * UNITS_S[unit]


def wrk(url: str, headers: dict[str, str], clients: int, seconds: float) -> dict[str, float]:
    """One closed-loop run: requests per second, p50 and p99 in ms, and the requests that were not a 200."""
    command = ["wrk", f"-t{min(clients, 2)}", f"-c{clients}", f"-d{seconds:.0f}s", "--latency", "--timeout", "10s"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    out = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.M))
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non_200 = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rate": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": _seconds(latency["50"]) * 1e3,
        "p99_ms": _seconds(latency["99"]) * 1e3,
        "failed": errors + (int(non_200.group(1)) if non_200 else 0),
    }


async def open_loop(url: str, headers: dict[str, str], clients: int, seconds: float) -> dict[str, float]:
    """``clients`` clients, each sending one request a second (spread over the second); p50 and p99 in ms."""
    waits: list[float] = []
    failed = 0
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:

        async def client(index: int) -> None:
            nonlocal failed
            await asyncio.sleep(index / clients)
            for _ in range(int(seconds)):
                tick = time.monotonic()
                try:
                    async with session.get(url, timeout=aiohttp.ClientTimeout(total=30)) as response:
                        await response.read()
                        failed += response.status != 200
                except (aiohttp.ClientError, TimeoutError):
                    failed += 1
                waits.append(time.monotonic() - tick)
                await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))

        await asyncio.gather(*(client(i) for i in range(clients)))
    waits.sort()
    return {
        "rate": len(waits) / seconds,
        "p50_ms": waits[len(waits) // 2] * 1e3,
        "p99_ms": waits[min(len(waits) - 1, int(len(waits) * 0.99))] * 1e3,
        "failed": failed,
    }


def alone_ms(client: httpx.Client, url: str) -> float:
    """One request's time once a run has stopped (on a kept-alive connection, so the client's set-up is out)."""
    started = time.monotonic()
    client.get(url).raise_for_status()
    return (time.monotonic() - started) * 1e3


def measure(database: str, seconds: float) -> tuple[list[str], str]:
    """The table's rows for one database, and a line with the rates at 100 clients against /healthz's."""
    folder = Path(tempfile.mkdtemp(prefix=f"vdc-load-{database}-"))
    postgres = None
    env = {}
    if database == "postgresql":
        initdb = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))), None) or shutil.which("initdb")
        if initdb is None:
            raise SystemExit("PostgreSQL's initdb is not installed; run with --databases sqlite")
        postgres = PostgresServer(str(initdb))
        postgres.start()
        env["VDC_DATABASE_URL"] = postgres.url
    serve = Serve(folder, env)
    alone = httpx.Client(headers=serve.auth, timeout=60)
    try:
        job_url = serve.submit({
            "model": {"preset": "lenet-300-100"},
            "dataset": {"builtin": "digits"},
            "options": {"epochs": 900, "pretrain_epochs": 0, "device": "cpu"},
        })
        wait_for(lambda: serve.job(job_url)["state"] == "running", 120, "the job to start training")
        paths = {"status poll": job_url, "job list": f"{serve.base}/v1/jobs", "/healthz": f"{serve.base}/healthz"}
        rows, rates = [], {}
        for clients in CLIENTS:
            for name, url in paths.items():
                run = wrk(url, serve.auth, clients, seconds)
                rates[name, clients] = run["rate"]
                after = alone_ms(alone, url)
                rows.append(
                    f"| {database} | closed | {clients} | {name} | {run['rate']:.0f} | {run['p50_ms']:.1f} | "
                    f"{run['p99_ms']:.1f} | {run['failed']:.0f} | {after:.1f} |"
                )
                print(rows[-1], flush=True)
        for clients in OPEN_LOOP_CLIENTS:
            for name in ("status poll", "job list"):
                run = asyncio.run(open_loop(paths[name], serve.auth, clients, seconds))
                after = alone_ms(alone, paths[name])
                rows.append(
                    f"| {database} | 1 request/s each | {clients} | {name} | {run['rate']:.0f} | "
                    f"{run['p50_ms']:.1f} | {run['p99_ms']:.1f} | {run['failed']:.0f} | {after:.1f} |"
                )
                print(rows[-1], flush=True)
        httpx.delete(job_url, headers=serve.auth, timeout=30)
        ratios = ", ".join(
            f"{name} {rates[name, 100] / rates['/healthz', 100]:.2f}" for name in ("status poll", "job list")
        )
        return rows, f"- {database}: requests/s at 100 closed-loop clients against /healthz's: {ratios}."
    finally:
        alone.close()
        serve.stop()
        if postgres is not None:
            postgres.remove()
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--databases", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"])
    parser.add_argument("--seconds", type=float, default=10, help="length of each run")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    measured = [measure(database, args.seconds) for database in args.databases]
    text = append_section("API under load (status polls, job lists, /healthz; a job training)", [
        f"`{command_line()}` on {cpu_name()}; `vdc serve` with its defaults (one worker training LeNet-300-100 on "
        f"digits, the API on uvicorn), wrk {args.seconds:.0f} s per closed-loop run.",
        "",
        "| database | load | clients | request | requests/s | p50 ms | p99 ms | failed | one request after, ms |",
        "|---|---|---|---|---|---|---|---|---|",
        *(row for rows, _ in measured for row in rows),
        "",
        *(ratio for _, ratio in measured),
    ])
    print(text)


if __name__ == "__main__":
    main()
