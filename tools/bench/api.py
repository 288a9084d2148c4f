"""The REST API's cost: an ``/sdapi/v1/txt2img`` round trip against the same job run in-process,
and how many ``progress`` requests per second the server answers while a job runs.

    python3 -m tools.bench.api [--model tiny] [--size 512] [--steps 20] [--runs 5] [--progress-seconds 5]

A real server (the UI plus ``--api``, as ``python launch.py --api`` serves it) on a free
localhost port. The in-process path is ``context.generate`` (the queue and the one
generation path, no HTTP) with the same request; runs alternate between the two so drift
hits both. The API path includes what a client pays for: JSON, the queue, base64 PNG
encoding of the answer and its decoding by the client.
"""

from __future__ import annotations

import argparse
import base64
import os
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--progress-seconds", type=float, default=5.0)
    args = parser.parse_args()

    import io

    import requests
    from PIL import Image

    from webui.app import AppOptions, create_blocks, create_context
    from webui.jobs import GenerationRequest
    from webui.rest import ApiOptions
    from webui.server import launch_blocks

    with tempfile.TemporaryDirectory() as tmp:
        context = create_context(AppOptions(models_dir=Path(tmp) / "models", outputs_dir=Path(tmp) / "outputs",
                                            data_dir=Path(tmp) / "data", device="auto", entry_points=False,
                                            model=args.model))
        blocks = create_blocks(context)
        port = free_port()
        launch_blocks(blocks, context, port=port, block=False, api=ApiOptions())
        url = f"http://127.0.0.1:{port}/sdapi/v1"
        body = {"prompt": "a small red circle on a blue background", "width": args.size, "height": args.size,
                "steps": args.steps, "seed": 1, "sampler_name": "Euler a", "cfg_scale": 7.0}
        request = GenerationRequest(prompt=body["prompt"], model=args.model, steps=args.steps, width=args.size,
                                    height=args.size, seed=1, sampler="Euler a", schedule_type="Automatic",
                                    save=False)
        session = requests.Session()

        def through_api() -> None:
            answer = session.post(f"{url}/txt2img", json=body, timeout=600)
            answer.raise_for_status()
            Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0]))).load()

        def in_process() -> None:
            context.generate(request)

        through_api()
        in_process()  # warm-up of both paths (the model is loaded by the first)
        api_times, local_times = [], []
        for _ in range(args.runs):
            for target, times in ((in_process, local_times), (through_api, api_times)):
                started = time.perf_counter()
                target()
                times.append(time.perf_counter() - started)
        paired = [a / b for a, b in zip(api_times, local_times)]
        device = context.pipelines.device
        print(f"txt2img, model {args.model} {args.size}x{args.size} {args.steps} steps on {device}, {args.runs} runs each")
        print(f"in-process median:        {statistics.median(local_times):.3f} s")
        print(f"/sdapi/v1/txt2img median: {statistics.median(api_times):.3f} s")
        print(f"ratio of medians API / in-process: {statistics.median(api_times) / statistics.median(local_times):.3f}")
        print(f"median of paired ratios:           {statistics.median(paired):.3f}")

        long_body = dict(body, steps=500, width=min(args.size, 256), height=min(args.size, 256))
        job = threading.Thread(target=lambda: session.post(f"{url}/txt2img", json=long_body, timeout=600))
        job.start()
        probe = requests.Session()
        while probe.get(f"{url}/progress", timeout=5).json()["state"]["sampling_steps"] == 0:
            time.sleep(0.05)
        answered, latencies = 0, []
        ended = time.perf_counter() + args.progress_seconds
        while time.perf_counter() < ended:
            started = time.perf_counter()
            probe.get(f"{url}/progress", timeout=5).raise_for_status()
            latencies.append(time.perf_counter() - started)
            answered += 1
        running = probe.get(f"{url}/progress", timeout=5).json()["state"]["sampling_steps"] > 0
        probe.post(f"{url}/interrupt", timeout=5)
        job.join(600)
        latencies.sort()
        print(f"progress while a job runs (one client, back to back, {args.progress_seconds:.0f} s"
              f"{'' if running else '; the job ended early'}): {answered / args.progress_seconds:.0f} requests/s, "
              f"median {statistics.median(latencies) * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")
        blocks.close()


if __name__ == "__main__":
    main()
