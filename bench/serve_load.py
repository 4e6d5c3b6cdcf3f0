"""Load on ``transferlab serve``: latency, errors and server memory under concurrent uploads.

    python bench/serve_load.py                          # builds a tiny dataset and run in a temporary folder
    python bench/serve_load.py --run runs/my-run --clients 4 --requests 8

Starts ``python -m transferlab serve RUN --host 127.0.0.1`` as a subprocess on a free port (CPU),
waits for ``GET /health`` and runs each scenario: ``--clients`` threads share ``--requests``
``POST /predict`` uploads, each thread sending its share one after another, all within
``--timeout`` seconds. "small" posts a 640x480 RGB PNG (the reference); "large" posts a
``--large-side`` square RGBA PNG (40 Mpx by default) that compresses to a few hundred kB,
the memory stress case. A background thread reads the server's VmRSS from /proc every 50 ms.
Prints a table, then one JSON line with every number, the ratios against "small"
and the machine. Traffic goes to 127.0.0.1 only; the server is stopped on every exit path.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _harness as harness
import httpx
import numpy as np
from PIL import Image

HOST = "127.0.0.1"  # the only address this benchmark ever talks to
SCENARIOS = ("small", "large")
CLASSES = {"red": (200, 40, 40), "blue": (40, 60, 200)}
MIB = 1024 * 1024


@dataclass
class Outcome:
    """What the clients of one scenario saw."""

    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    not_sent: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, status: str, latency_ms: float) -> None:
        with self.lock:
            self.statuses[status] += 1
            self.latencies_ms.append(latency_ms)


# --- inputs --------------------------------------------------------------------------------------------------------


def make_dataset(folder: Path, train: int = 8, val: int = 3) -> None:
    """Two color classes of noisy 72x64 PNGs under folder/{train,val}/<class>/."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        for name, color in CLASSES.items():
            target = folder / split / name
            target.mkdir(parents=True)
            for i in range(count):
                noise = rng.integers(-30, 31, size=(64, 72, 3))
                pixels = np.clip(np.array(color) + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels, "RGB").save(target / f"{i}.png")


def train_run(workdir: Path) -> Path:
    """A tiny trained run (one epoch at 64 px) in workdir/run."""
    data, run_dir = workdir / "data", workdir / "run"
    make_dataset(data)
    harness.run({"data": str(data), "image_size": 64, "batch_size": 8, "epochs": 1, "head_warmup_epochs": 0}, run_dir)
    return run_dir


def png_bytes(image: Image.Image, level: int = 6) -> bytes:
    """The image encoded as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=level)
    return buffer.getvalue()


def small_png() -> bytes:
    """A 640x480 RGB gradient with noise: an ordinary photo-sized upload (~1 MB)."""
    rng = np.random.default_rng(1)
    ramp = np.linspace(0, 255, 640)[None, :, None] * np.ones((480, 1, 3))
    pixels = np.clip(ramp + rng.integers(-40, 41, size=(480, 640, 3)), 0, 255).astype(np.uint8)
    return png_bytes(Image.fromarray(pixels, "RGB"))


def large_png(side: int) -> bytes:
    """A side x side RGBA PNG, uniform but for a small checkerboard: tens of Mpx in a few hundred kB."""
    pixels = np.full((side, side, 4), (90, 160, 60, 255), dtype=np.uint8)
    patch = min(side, 256)
    checker = (np.indices((patch, patch)).sum(axis=0) // 16 % 2).astype(bool)
    pixels[:patch, :patch][checker] = (250, 250, 250, 128)
    return png_bytes(Image.fromarray(pixels, "RGBA"), level=9)


# --- server --------------------------------------------------------------------------------------------------------


def free_port() -> int:
    """A port that is free on the loopback address now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def start_server(run_dir: Path, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    """``transferlab serve`` on HOST:port, on the CPU, its output going to log_path."""
    command = [sys.executable, "-m", "transferlab", "serve", str(run_dir), "--host", HOST, "--port", str(port),
               "--device", "cpu"]
    with log_path.open("wb") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def log_tail(log_path: Path, lines: int = 20) -> str:
    """The last lines of the server's log."""
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_healthy(server: subprocess.Popen[bytes], base: str, log_path: Path, timeout: float) -> float:
    """Seconds until ``GET /health`` answers 200; RuntimeError if the server exits or the time runs out."""
    start = time.monotonic()
    with httpx.Client(base_url=base, trust_env=False, timeout=2.0) as client:
        while time.monotonic() - start < timeout:
            if server.poll() is not None:
                raise RuntimeError(f"the server exited with code {server.returncode}:\n{log_tail(log_path)}")
            try:
                if client.get("/health").status_code == 200:
                    return time.monotonic() - start
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    raise RuntimeError(f"the server did not answer /health within {timeout:g} s:\n{log_tail(log_path)}")


def stop_server(server: subprocess.Popen[bytes], grace: float = 10.0) -> int:
    """Terminate the server, kill it if it is still there after ``grace`` seconds; its exit code."""
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(grace)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(grace)
    return server.returncode


# --- memory --------------------------------------------------------------------------------------------------------


def kib_field(path: str, key: str) -> int | None:
    """A ``kB`` field of a /proc file (/proc/meminfo, /proc/<pid>/status); None when it cannot be read."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def proc_status_kib(pid: int, key: str) -> int | None:
    """A ``kB`` field (VmRSS, VmHWM) of /proc/<pid>/status; None once the process is gone."""
    return kib_field(f"/proc/{pid}/status", key)


class RssSampler:
    """Polls a process's VmRSS in a background thread and keeps the peak (KiB)."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kib = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="rss-sampler", daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            rss = proc_status_kib(self.pid, "VmRSS")
            if rss is not None:
                self.peak_kib = max(self.peak_kib, rss)
                self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --- load ----------------------------------------------------------------------------------------------------------


def client_loop(base: str, body: bytes, count: int, deadline: float, outcome: Outcome) -> None:
    """One client: ``count`` uploads one after another, none started after ``deadline``."""
    with httpx.Client(base_url=base, trust_env=False) as client:
        for sent in range(count):
            left = deadline - time.monotonic()
            if left <= 0.5:
                with outcome.lock:
                    outcome.not_sent += count - sent
                return
            start = time.perf_counter()
            try:
                response = client.post("/predict", files={"file": ("upload.png", body, "image/png")}, timeout=left)
                ok = response.status_code == 200 and "label" in response.json()
                status = "200" if ok else str(response.status_code)
            except (httpx.HTTPError, ValueError) as exc:
                status = type(exc).__name__
            outcome.add(status, (time.perf_counter() - start) * 1000)


def shares(requests: int, clients: int) -> list[int]:
    """Requests per client, as even as possible, no client without work."""
    clients = max(1, min(clients, requests))
    return [requests // clients + (i < requests % clients) for i in range(clients)]


def run_load(base: str, body: bytes, requests: int, clients: int, timeout: float) -> tuple[Outcome, float]:
    """All clients of one scenario; what they saw and the wall time (bounded by ``timeout`` plus a little)."""
    outcome = Outcome()
    start = time.monotonic()
    deadline = start + timeout
    threads = [threading.Thread(target=client_loop, args=(base, body, n, deadline, outcome), daemon=True)
               for n in shares(requests, clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline + 5 - time.monotonic()))
    return outcome, time.monotonic() - start


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100), linear between the nearest ranks; None without values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def rounded(value: float | None, digits: int = 1) -> float | None:
    """value rounded, None kept."""
    return None if value is None else round(value, digits)


def run_scenario(name: str, server: subprocess.Popen[bytes], base: str, body: bytes,
                 args: argparse.Namespace) -> dict[str, Any]:
    """One scenario under the RSS sampler, summarized."""
    before = proc_status_kib(server.pid, "VmRSS") or 0
    with RssSampler(server.pid) as sampler:
        outcome, wall = run_load(base, body, args.requests, args.clients, args.timeout)
    time.sleep(1.0)  # let the server return what it frees
    after = proc_status_kib(server.pid, "VmRSS")
    sent = len(outcome.latencies_ms)
    ok = outcome.statuses.get("200", 0)
    peak = max(sampler.peak_kib, before)
    latencies = outcome.latencies_ms
    return {
        "scenario": name, "upload_kb": round(len(body) / 1024, 1), "requests": args.requests, "sent": sent,
        "not_sent": outcome.not_sent, "ok": ok, "errors": sent - ok,
        "statuses": {k: v for k, v in sorted(outcome.statuses.items()) if k != "200"},
        "p50_ms": rounded(percentile(latencies, 50)), "p95_ms": rounded(percentile(latencies, 95)),
        "max_ms": rounded(percentile(latencies, 100)),
        "req_per_s": round(sent / wall, 3), "ok_per_s": round(ok / wall, 3), "wall_s": round(wall, 2),
        "rss_before_mb": round(before / 1024, 1), "rss_peak_mb": round(peak / 1024, 1),
        "rss_growth_mb": round((peak - before) / 1024, 1),
        "rss_after_mb": None if after is None else round(after / 1024, 1),
        "rss_samples": sampler.samples, "server_alive": server.poll() is None,
    }


# --- report --------------------------------------------------------------------------------------------------------


def versus_small(results: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Each scenario against "small": p50/p95 latency, throughput, absolute peak RSS and RSS growth."""
    reference = next((r for r in results if r["scenario"] == "small"), None)
    if reference is None:
        return {}
    return {r["scenario"]: {
        "p50_ratio": harness.ratio(r["p50_ms"], reference["p50_ms"], 3),
        "p95_ratio": harness.ratio(r["p95_ms"], reference["p95_ms"], 3),
        "throughput_ratio": harness.ratio(r["req_per_s"], reference["req_per_s"], 3),
        "rss_peak_ratio": harness.ratio(r["rss_peak_mb"], reference["rss_peak_mb"], 3),
        "rss_growth_ratio": harness.ratio(r["rss_growth_mb"], reference["rss_growth_mb"], 3, floor=1.0),  # None < 1 MB
        "rss_growth_minus_small_mb": round(r["rss_growth_mb"] - reference["rss_growth_mb"], 1),
    } for r in results if r is not reference}


def machine() -> dict[str, Any]:
    """The facts that make numbers from two machines comparable."""
    def version(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    total_kib = kib_field("/proc/meminfo", "MemTotal")
    return {"cpu_count": os.cpu_count(), "cpu_affinity": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "torch": version("torch"), "transferlab": version("transferlab"),
            "pillow": version("pillow"), "platform": platform.platform(),
            "mem_total_mb": None if total_kib is None else round(total_kib / 1024)}


def results_table(results: list[dict[str, Any]]) -> str:
    """One row per scenario."""
    def codes(r: dict[str, Any]) -> str:
        text = ", ".join(f"{k}x{v}" for k, v in r["statuses"].items()) or "-"
        return text + (f" ({r['not_sent']} not sent)" if r["not_sent"] else "")

    columns = [("scenario", "scenario"), ("upload kB", "upload_kb"), ("requests", "requests"), ("ok", "ok"),
               ("errors", "errors"), ("status codes", codes), ("p50 ms", "p50_ms"), ("p95 ms", "p95_ms"),
               ("max ms", "max_ms"), ("req/s", "req_per_s"), ("RSS before MB", "rss_before_mb"),
               ("RSS peak MB", "rss_peak_mb"), ("RSS growth MB", "rss_growth_mb"), ("RSS after MB", "rss_after_mb"),
               ("wall s", "wall_s")]
    return harness.table(results, columns)


# --- main ----------------------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = harness.parser(__doc__)
    parser.add_argument("--run", type=Path, help="an existing run directory (default: train a tiny one)")
    parser.add_argument("--clients", type=int, default=10, help="concurrent clients (default 10)")
    parser.add_argument("--requests", type=int, default=40, help="requests per scenario (default 40)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per scenario (default 180)")
    parser.add_argument("--skip", nargs="+", default=[], choices=SCENARIOS, help="scenarios not to run")
    parser.add_argument("--large-side", type=int, default=6300, help="side of the large PNG in px (default 6300)")
    parser.add_argument("--startup-timeout", type=float, default=180.0,
                        help="seconds to wait for /health (default 180)")
    args = parser.parse_args()
    if args.clients < 1 or args.requests < 1 or args.timeout <= 0 or args.large_side < 1:
        parser.error("--clients, --requests, --timeout and --large-side must be positive")
    return args


def bodies(args: argparse.Namespace) -> dict[str, Callable[[], bytes]]:
    """How to build each scenario's upload."""
    return {"small": small_png, "large": lambda: large_png(args.large_side)}


def serve_and_load(run_dir: Path, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Start the server, run the scenarios, stop the server (on every path); everything measured."""
    uploads = {name: build() for name, build in bodies(args).items() if name not in args.skip}
    port = free_port()
    base = f"http://{HOST}:{port}"
    log_path = workdir / "server.log"
    server = start_server(run_dir, port, log_path)
    results: list[dict[str, Any]] = []
    startup, idle_rss, hwm = None, None, None
    try:
        startup = wait_healthy(server, base, log_path, args.startup_timeout)
        idle_rss = proc_status_kib(server.pid, "VmRSS")
        for name, body in uploads.items():
            if server.poll() is not None:
                print(f"server exited ({server.returncode}) before {name!r}:\n{log_tail(log_path)}", file=sys.stderr)
                break
            results.append(run_scenario(name, server, base, body, args))
        hwm = proc_status_kib(server.pid, "VmHWM")
    finally:
        code = stop_server(server)
    if results and not results[-1]["server_alive"]:
        print(f"the server died during the load:\n{log_tail(log_path)}", file=sys.stderr)
    return {"results": results, "startup_s": rounded(startup, 2),
            "idle_rss_mb": None if idle_rss is None else round(idle_rss / 1024, 1),
            "vm_hwm_mb": None if hwm is None else round(hwm / 1024, 1), "server_exit_code": code}


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` stops the server
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        workdir = Path(tmp)
        run_dir = args.run if args.run is not None else train_run(workdir)
        measured = serve_and_load(run_dir, workdir, args)
    results = measured.pop("results")
    summary = {"clients": args.clients, "requests": args.requests, "timeout_s": args.timeout,
               "large_side": args.large_side, "run": str(args.run) if args.run else "tiny (trained here)",
               **measured, "scenarios": {r["scenario"]: {k: v for k, v in r.items() if k != "scenario"}
                                         for r in results},
               "vs_small": versus_small(results), "machine": machine()}
    harness.report("serve_load", summary, results_table(results))


if __name__ == "__main__":
    main()
