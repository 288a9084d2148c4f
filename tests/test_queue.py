"""The device's job queue: order, positions, cancel, interrupt, the limit — unit tests on a
run function the test controls, then the real thing: jobs from two gradio_client clients on
a live server, held at a step by an extension so nothing races the clock."""

from __future__ import annotations

import threading
import time

import pytest

from webui.jobs import GenerationRequest, GenerationResult, ImageRecord, Job
from webui.queue import JobCancelledError, JobQueue, QueueFullError

WAIT = 60  # seconds; every wait below ends on an event long before this


class Gate:
    """A run function whose jobs each wait until the test opens them; records what ran, in order."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.started = {}
        self.release = {}
        self.lock = threading.Lock()

    def expect(self, prompt: str) -> None:
        self.started[prompt] = threading.Event()
        self.release[prompt] = threading.Event()

    def __call__(self, request: GenerationRequest, job: Job) -> GenerationResult:
        with self.lock:
            self.ran.append(request.prompt)
        self.started[request.prompt].set()
        assert self.release[request.prompt].wait(WAIT)
        if request.prompt == "boom":
            raise ValueError("this job fails")
        job.start_image(0, 1, 2)
        job.step(1)
        result = GenerationResult(interrupted=job.interrupted)
        if not job.interrupted:
            result.images.append(ImageRecord(image=None, seed=1, infotext=request.prompt))
        return result


def submit(queue: JobQueue, gate: Gate, prompt: str) -> Job:
    gate.expect(prompt)
    return queue.submit(GenerationRequest(prompt=prompt, model="tiny"))


def kinds(job: Job) -> list[str]:
    return [event["kind"] for event in job.events()]


def test_jobs_run_one_after_the_other_in_submission_order_and_know_their_place():
    gate = Gate()
    queue = JobQueue(gate, limit=8)
    first = submit(queue, gate, "first")
    assert gate.started["first"].wait(WAIT)
    second, third = submit(queue, gate, "second"), submit(queue, gate, "third")
    assert (second.position, third.position) == (2, 3)  # the running job is ahead of both
    assert second.progress_text() == "Queued: 1 job ahead of yours"
    assert third.progress_text() == "Queued: 2 jobs ahead of yours"
    assert not gate.started["second"].is_set()  # one device, one job at a time
    gate.release["first"].set()
    assert queue.wait(first, timeout=WAIT).images[0].infotext == "first"
    assert gate.started["second"].wait(WAIT)
    third_positions = [e["position"] for e in third.events() if e["kind"] == "queued"]
    assert third_positions[-1] == 2 and third_positions[0] == 3  # it moved up when the first ended
    gate.release["second"].set()
    gate.release["third"].set()
    assert queue.wait(third, timeout=WAIT).images
    assert gate.ran == ["first", "second", "third"]
    assert kinds(first)[-1] == "finished" and "started" in kinds(first) and "step" in kinds(first)


def test_a_job_the_worker_takes_before_its_place_is_announced_still_begins_with_queued():
    """The race CI once hit: the idle worker starts a job before ``submit`` announces its place."""
    gate = Gate()
    queue = JobQueue(gate, limit=8)
    announce = queue._announce_positions
    submitting = threading.current_thread()

    def announce_late() -> None:  # the submitter announces only after the worker started the job
        if threading.current_thread() is submitting:
            assert gate.started["late"].wait(WAIT)
        announce()

    queue._announce_positions = announce_late
    job = submit(queue, gate, "late")
    gate.release["late"].set()
    queue.wait(job, timeout=WAIT)
    assert kinds(job)[:2] == ["queued", "started"], kinds(job)
    assert kinds(job).count("queued") == 1 and kinds(job)[-1] == "finished"
    assert job.events()[0]["position"] == 1 and job.position == 0


def test_a_job_that_started_elsewhere_still_shows_its_place_when_it_enters_the_queue():
    """An extension task's job starts on its own thread, then waits in the queue for its generation."""
    gate = Gate()
    queue = JobQueue(gate, limit=8)
    gate.expect("first")
    first = queue.submit(GenerationRequest(prompt="first", model="tiny"))
    assert gate.started["first"].wait(WAIT)
    task_job = Job()
    task_job.emit("started", task="background")
    gate.expect("task")
    queue.submit(GenerationRequest(prompt="task", model="tiny"), task_job)
    assert kinds(task_job) == ["started", "queued"] and task_job.position == 2 and task_job.status == "queued"
    gate.release["first"].set()
    gate.release["task"].set()
    queue.wait(task_job, timeout=WAIT)
    assert kinds(task_job)[-2:] == ["step", "finished"] and queue.wait(first, timeout=WAIT).images


def test_a_queued_job_can_be_cancelled_and_never_runs():
    gate = Gate()
    queue = JobQueue(gate, limit=8)
    running = submit(queue, gate, "running")
    assert gate.started["running"].wait(WAIT)
    waiting = submit(queue, gate, "waiting")
    after = submit(queue, gate, "after")
    assert queue.cancel(waiting) == "cancelled"
    assert after.position == 2  # moved up into the cancelled job's place
    gate.release["running"].set()
    gate.release["after"].set()
    queue.wait(after, timeout=WAIT)
    assert gate.ran == ["running", "after"]
    assert kinds(waiting)[-1] == "cancelled"
    with pytest.raises(JobCancelledError):
        queue.wait(waiting, timeout=WAIT)


def test_cancelling_a_running_job_interrupts_it_and_keeps_the_worker_going():
    gate = Gate()
    queue = JobQueue(gate, limit=8)
    running = submit(queue, gate, "running")
    assert gate.started["running"].wait(WAIT)
    assert queue.cancel(running) == "interrupted"
    gate.release["running"].set()
    result = queue.wait(running, timeout=WAIT)
    assert result.interrupted and not result.images
    assert kinds(running)[-1] == "interrupted"
    following = submit(queue, gate, "following")
    gate.release["following"].set()
    assert queue.wait(following, timeout=WAIT).images


def test_the_limit_refuses_the_excess_with_a_message_and_loses_nothing_accepted():
    gate = Gate()
    queue = JobQueue(gate, limit=2)
    accepted = [submit(queue, gate, "a")]
    assert gate.started["a"].wait(WAIT)  # running: not counted against the waiting limit
    accepted += [submit(queue, gate, "b"), submit(queue, gate, "c")]
    with pytest.raises(QueueFullError, match="queue is full \\(2 jobs waiting\\)"):
        submit(queue, gate, "d")
    for prompt in "abc":
        gate.release[prompt].set()
    assert [queue.wait(job, timeout=WAIT).images[0].infotext for job in accepted] == ["a", "b", "c"]
    assert "d" not in gate.ran


def test_a_failing_job_reports_its_error_and_the_next_job_still_runs():
    gate = Gate()
    queue = JobQueue(gate, limit=8)
    failing = submit(queue, gate, "boom")
    following = submit(queue, gate, "after")
    gate.release["boom"].set()
    gate.release["after"].set()
    with pytest.raises(ValueError, match="this job fails"):
        queue.wait(failing, timeout=WAIT)
    assert failing.events()[-1]["kind"] == "failed" and "this job fails" in failing.events()[-1]["message"]
    assert queue.wait(following, timeout=WAIT).images


def test_a_job_that_runs_a_job_on_the_worker_runs_it_inline():
    inner_ran = threading.Event()
    holder = {}

    def run(request, job):
        if request.prompt == "outer":
            return holder["queue"].generate(GenerationRequest(prompt="inner", model="tiny"))
        inner_ran.set()
        return GenerationResult()

    queue = JobQueue(run, limit=8)
    holder["queue"] = queue
    queue.generate(GenerationRequest(prompt="outer", model="tiny"))  # would deadlock if it waited in line
    assert inner_ran.is_set()


# ------------------------------------------------------------------------------------------
# The real queue on a live server, driven by two gradio_client clients
# ------------------------------------------------------------------------------------------


class HoldAtFirstStep:
    """A test extension: the first job that reaches its first step waits there until released."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.release = threading.Event()

    from webui.api import hookimpl

    @hookimpl
    def pipeline_call_kwargs(self, request, model):
        """Hold the first job at its first step."""
        if request.prompt != "hold":
            return None

        def hold(pipe, step, timestep, callback_kwargs):
            if step == 0:
                self.reached.set()
                assert self.release.wait(WAIT)
            return {}

        return {"callback_on_step_end": hold}


@pytest.fixture
def held_server(tmp_path):
    from gradio_client import Client

    from tests.conftest import make_options, start_server

    hold = HoldAtFirstStep()
    context, blocks, url = start_server(make_options(tmp_path, extra_plugins={"hold": hold}))
    try:
        yield context, hold, lambda: Client(url, verbose=False)
    finally:
        hold.release.set()
        blocks.close()


def txt2img_args(prompt: str, steps: int = 4) -> dict:
    return dict(model="tiny", prompt=prompt, negative_prompt="", sampler="Euler", schedule_type="Automatic",
                steps=steps, width=64, height=64, cfg_scale=5, seed=7, batch_count=1, batch_size=1,
                use_refiner=False, refiner_model=None, refiner_switch_at=0.8)


def wait_until(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.slow
def test_two_clients_run_one_after_the_other_and_the_second_sees_its_place(held_server):
    context, hold, client = held_server
    first = client().submit(**txt2img_args("hold"), api_name="/txt2img")
    assert hold.reached.wait(WAIT)  # the first job runs and is held at its first step
    second_client = client()
    second = second_client.submit(**txt2img_args("a red circle"), api_name="/txt2img")
    wait_until(lambda: len(context.job_queue().snapshot()["waiting"]) == 1, "the second job to queue")
    wait_until(lambda: any("1 job ahead of yours" in str(update[2]) for update in second.outputs()),
               "the second page to show its place")
    assert not first.done() and not second.done()
    hold.release.set()
    first_gallery = first.result(timeout=WAIT)[0]
    second_gallery = second.result(timeout=WAIT)[0]
    assert len(first_gallery) == 1 and len(second_gallery) == 1
    # the second job started only after the first had ended
    def started_at(job):
        return next(e["time"] for e in job.events() if e["kind"] == "started")

    ran = sorted(context.job_queue()._jobs.values(), key=started_at)
    assert len(ran) == 2 and ran[0].events()[-1]["time"] <= started_at(ran[1])


@pytest.mark.slow
def test_a_queued_job_is_cancelled_from_its_page_and_a_running_one_interrupted(held_server):
    context, hold, client = held_server
    first_client, second_client = client(), client()
    first = first_client.submit(**txt2img_args("hold", steps=6), api_name="/txt2img")
    assert hold.reached.wait(WAIT)
    second = second_client.submit(**txt2img_args("never drawn"), api_name="/txt2img")
    wait_until(lambda: len(context.job_queue().snapshot()["waiting"]) == 1, "the second job to queue")
    assert second_client.predict(api_name="/interrupt") == "Cancelled: the job had not started."
    with pytest.raises(Exception, match="cancelled before it started"):
        second.result(timeout=WAIT)
    assert first_client.predict(api_name="/interrupt") == "Interrupting…"
    hold.release.set()
    gallery, _, status, info, _ = first.result(timeout=WAIT)
    assert "interrupted" in status and len(gallery) == 1  # the partly denoised image is kept, as A1111 does
    steps = [e["step"] for job in context.job_queue()._jobs.values() for e in job.events() if e["kind"] == "step"]
    assert max(steps) == 1  # stopped after the step it was held at, not after all 6


@pytest.mark.slow
def test_the_queue_limit_refuses_a_job_with_a_message_on_the_page(held_server):
    context, hold, client = held_server
    context.settings.update({"queue.limit": 1})
    first = client().submit(**txt2img_args("hold"), api_name="/txt2img")
    assert hold.reached.wait(WAIT)
    waiting = client().submit(**txt2img_args("waits"), api_name="/txt2img")
    wait_until(lambda: len(context.job_queue().snapshot()["waiting"]) == 1, "the second job to queue")
    with pytest.raises(Exception, match="queue is full"):
        client().predict(**txt2img_args("refused"), api_name="/txt2img")
    hold.release.set()
    assert len(first.result(timeout=WAIT)[0]) == 1 and len(waiting.result(timeout=WAIT)[0]) == 1
