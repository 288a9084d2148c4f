"""Seconds from ``python3 launch.py`` to the first HTTP 200 of the UI.

    python3 -m tools.bench.startup [--runs 3]

Runs launch.py as a user would (with its requirements check, after installation) on a
free port with throwaway data/outputs folders, polls the page, prints each run and the
median, and stops the server.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def one_run(timeout: float = 300.0) -> float:
    """Start the server, wait for HTTP 200 on /, return the seconds it took."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, str(ROOT / "launch.py"), "--port", str(port), "--data-dir", f"{tmp}/data",
                   "--outputs-dir", f"{tmp}/outputs"]
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
        try:
            while time.perf_counter() - started < timeout:
                if process.poll() is not None:
                    raise RuntimeError(f"launch.py exited with {process.returncode}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                        if response.status == 200:
                            return time.perf_counter() - started
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    pass
                time.sleep(0.05)
            raise TimeoutError("no HTTP 200 within the timeout")
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    times = []
    for index in range(args.runs):
        seconds = one_run()
        times.append(seconds)
        print(f"run {index + 1}: {seconds:.2f} s to first HTTP 200", flush=True)
    print(f"median start-up to first HTTP 200: {statistics.median(times):.2f} s over {args.runs} runs")


if __name__ == "__main__":
    main()
