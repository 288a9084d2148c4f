"""Images per minute through Easel's queue on the in-process backend and on 1 and 2 Ray Serve
replicas, and the per-job dispatch overhead (front -> replica -> front) against in process.

    python3 -m tools.bench.ray_backend [--model tiny] [--size 64] [--steps 8] [--jobs 16]
                                       [--num-cpus 2] [--replica-cpus 0.5] [--threads N]

Throughput: ``--jobs`` jobs are queued at once and timed from the first submit to the last
result (after one warm-up job per replica, so every replica has loaded the model).
Overhead: jobs of one step at 64 px, one at a time, on the in-process backend and on one
replica; the difference of the medians is what dispatching costs per job (the request
travels to the replica, events and PNGs stream back, the front decodes them). Images are
not saved. Needs ``ray[serve]`` (requirements-ray.txt); the Ray cluster is a private one on
127.0.0.1 with ``--num-cpus`` CPUs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _throughput(context, request_fields: dict, jobs: int) -> float:
    """Images per minute for ``jobs`` jobs queued at once."""
    from webui.jobs import GenerationRequest

    queue = context.job_queue()
    started = time.perf_counter()
    submitted = [queue.submit(GenerationRequest(**request_fields, seed=index)) for index in range(jobs)]
    images = sum(len(queue.wait(job, timeout=3600).images) for job in submitted)
    return images / (time.perf_counter() - started) * 60


def _per_job_seconds(context, model: str, runs: int) -> list[float]:
    """Wall time of one-step 64 px jobs run one after the other."""
    from webui.jobs import GenerationRequest

    times = []
    for index in range(runs):
        request = GenerationRequest(prompt="a red circle", model=model, width=64, height=64, steps=1, seed=index,
                                    save=False)
        started = time.perf_counter()
        context.generate(request)
        times.append(time.perf_counter() - started)
    return times


def _warm_up(context, request_fields: dict, workers: int) -> None:
    from webui.jobs import GenerationRequest

    queue = context.job_queue()
    jobs = [queue.submit(GenerationRequest(**{**request_fields, "steps": 1}, seed=index)) for index in range(workers)]
    for job in jobs:
        queue.wait(job, timeout=3600)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=16, help="jobs queued at once for the throughput figures")
    parser.add_argument("--overhead-runs", type=int, default=15)
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the private Ray cluster")
    parser.add_argument("--replica-cpus", type=float, default=0.5, help="CPUs each replica reserves")
    parser.add_argument("--threads", type=int, default=None,
                        help="PyTorch CPU threads of the in-process backend and of each replica (default: "
                             "PyTorch's own choice in this process, and the same in the replicas)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from webui.app import create_context
    from webui.backends import bind_ray_to_localhost
    from webui.testing import make_options

    bind_ray_to_localhost()
    load_before = os.getloadavg()
    import ray

    ray.init(num_cpus=args.num_cpus, include_dashboard=False, namespace="easel", log_to_driver=False)
    fields = {"prompt": "a small red circle on a blue background", "model": args.model, "width": args.size,
              "height": args.size, "steps": args.steps, "save": False}
    rows = []
    overhead: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, backend, workers in (("in process", "local", 1), ("Ray Serve, 1 replica", "ray", 1),
                                        ("Ray Serve, 2 replicas", "ray", 2)):
            backend_options = ({"replica_cpus": args.replica_cpus, "torch_threads": args.threads,
                                "app_name": f"easel-bench-{workers}"} if backend == "ray" else {})
            started = time.perf_counter()
            context = create_context(make_options(Path(tmp) / f"{backend}{workers}", model=args.model,
                                                  backend=backend, workers=workers, backend_options=backend_options))
            ready = time.perf_counter() - started
            try:
                _warm_up(context, fields, workers)
                per_minute = _throughput(context, fields, args.jobs)
                if workers == 1:
                    overhead[backend] = statistics.median(_per_job_seconds(context, args.model, args.overhead_runs))
            finally:
                context.close()
            rows.append((label, per_minute, ready))
            print(f"{label}: {per_minute:.1f} images/min ({args.jobs} jobs of {args.size} px, {args.steps} steps); "
                  f"ready in {ready:.1f} s", flush=True)
    ray.shutdown()
    print()
    print("| backend | images / minute | start-up (s) |")
    print("|---|---|---|")
    for label, per_minute, ready in rows:
        print(f"| {label} | {per_minute:.1f} | {ready:.1f} |")
    print()
    import torch

    print(f"PyTorch CPU threads in process and per replica: {torch.get_num_threads()}; "
          f"load average before/after: {load_before} / {os.getloadavg()}")
    print(f"Per-job wall time, one-step 64 px jobs one at a time (median of {args.overhead_runs}): in process "
          f"{overhead['local'] * 1000:.0f} ms, one Ray Serve replica {overhead['ray'] * 1000:.0f} ms; "
          f"dispatch overhead {(overhead['ray'] - overhead['local']) * 1000:.0f} ms per job.")


if __name__ == "__main__":
    main()
