"""How the front's handle picks a replica for a job: free GPUs only, the one that holds the model first.

Serve's own router waits a while for a replica that holds the job's model even when another
one is idle, and knows nothing of training runs. :class:`EaselRequestRouter` (a Serve
``RequestRouter``, chosen in :class:`webui.backends.ray_serve.RayServeBackend`) ranks the
replicas for each job:

1. replicas whose GPU is free and that already hold the job's checkpoint
   (``serve.multiplexed``: no loading);
2. the other replicas whose GPU is free (they load it).

A replica whose GPU a training run holds (its routing stats say ``held``, see
:class:`webui.backends.ray_worker.DeviceHolds`) is in neither rank: it takes no job until the
run ends. Serve tries the first rank, then the second, and waits (with backoff) when every
replica is busy; Easel's queue sends a job only when one is free.
"""

from __future__ import annotations

from typing import Optional

from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica


def rank_replicas(replicas: list[RunningReplica], model: str | None) -> list[list[RunningReplica]]:
    """The free replicas (not ``held``), those holding ``model`` first; empty ranks left out."""
    free = [replica for replica in replicas if not (replica.routing_stats or {}).get("held")]
    holding = [replica for replica in free if model and model in replica.multiplexed_model_ids]
    others = [replica for replica in free if replica not in holding]
    return [rank for rank in (holding, others) if rank]


class EaselRequestRouter(FIFOMixin, RequestRouter):
    """Free GPUs only, the replica that already holds the job's model first (see the module's docstring)."""

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: Optional[PendingRequest] = None) -> list[list[RunningReplica]]:
        """Ranks of replicas for ``pending_request``, the most preferred first."""
        if pending_request is None:
            return rank_replicas(candidate_replicas, None)
        # Every rank is offered at once: when none takes the job, Serve must wait before it asks again.
        # Without this it asks again at once, in a loop that never lets the replicas' new stats in.
        pending_request.routing_context.should_backoff = True
        return rank_replicas(candidate_replicas, pending_request.metadata.multiplexed_model_id)
