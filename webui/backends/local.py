"""The in-process backend (the default): the job runs on the queue's worker thread, in this process."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from webui.context import EaselContext
    from webui.jobs import GenerationRequest, GenerationResult, Job


class InProcessBackend:
    """Runs every job through :func:`webui.generation.run_generation` on the calling thread.

    One job at a time (the app's one device); this is what Easel did before backends existed.
    """

    name = "local"

    def __init__(self, context: "EaselContext") -> None:
        self.context = context

    def capacity(self) -> int:
        return 1

    def device_in_use(self) -> str | None:
        """The app's ``device_in_use`` hooks: a training run on this process's device pauses the queue."""
        return self.context.device_in_use()

    def run(self, request: "GenerationRequest", job: "Job") -> "GenerationResult":
        from webui.generation import run_generation

        return run_generation(self.context, request, job)

    def close(self) -> None:
        """Nothing to release: the models belong to the context's pipeline manager."""
