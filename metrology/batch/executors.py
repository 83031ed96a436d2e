"""Where a batch's captures run: this process, a pool of local processes, or a Ray cluster.

Every executor has ``run(fn, jobs)``, which yields exactly one :class:`JobOutcome` per job, in the
order they finish, whatever happens to the workers:

* ``local`` with ``--jobs 1``: this process, one capture after the other;
* ``local`` with ``--jobs N``: ``concurrent.futures.ProcessPoolExecutor`` (spawned processes). A
  worker that dies (killed for memory, a crash in a native library) breaks Python's pool; the
  captures it had not started are resubmitted to a fresh pool, and each capture that was running
  when it broke is run again alone, so the one that kills its worker is named and the others
  finish;
* ``ray`` / ``ray://HOST:PORT``: one Ray task per capture, and a full-field capture's tile groups
  as further tasks (:mod:`metrology.batch.ray_tiles`) (:mod:`ray`, an optional extra:
  ``pip install 'lens-metrology[ray]'``). ``ray`` connects to ``$RAY_ADDRESS`` or to the cluster
  started on this machine by ``ray start``, else starts a Ray instance for this run; ``ray://``
  connects through the Ray Client (a connection the head fails to serve is tried again:
  :data:`RAY_CLIENT_ATTEMPTS`). A task whose worker dies is that capture's error (no retry:
  re-running the batch retries it). docs/batch.md describes a cluster set-up.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace

from metrology.batch.run import failed
from metrology.errors import InputError


def make_executor(spec: str | None, jobs: int | None, threads: int = 1, notify=None):
    """The executor named by ``--executor`` (``local``, ``ray``, ``ray://HOST:PORT``) for ``--jobs``
    captures at once, each fitted with ``threads`` torch threads; ``notify(line)`` hears what the
    command should tell its user while connecting (default: nothing)."""
    spec = spec or "local"
    for option, value in (("--jobs", jobs), ("--threads", threads)):
        if value is not None and value < 1:
            raise InputError(option, f"must be at least 1, got {value}")
    if spec == "local":
        return ProcessPool(jobs) if (jobs or 1) > 1 else InProcess()
    if spec == "ray" or spec.startswith("ray://"):
        return RayExecutor(None if spec == "ray" else spec, jobs, threads, notify or _quiet)
    raise InputError("--executor", f"expected local, ray or ray://HOST:PORT, got {spec!r}")


class InProcess:
    """Every capture in this process, one after the other."""

    description = "local, 1 process"
    workers = 1

    def run(self, fn, jobs):
        for job in jobs:
            yield fn(job)


# ------------------------------------------------------------------ local processes
_started = None  # in a pool worker: the queue on which it announces each job it starts


def _init_worker(started):
    global _started
    _started = started


def _announced(fn, job):
    _started.put(job.index)
    return fn(job)


class ProcessPool:
    """``workers`` spawned processes (``concurrent.futures``), surviving the death of a worker."""

    def __init__(self, workers: int):
        self.workers = int(workers)
        self.description = f"local, {self.workers} processes"

    def run(self, fn, jobs):
        pending, suspects = list(jobs), []
        while pending or suspects:
            if pending:
                pending, running = yield from self._round(fn, pending, self.workers)
                if running is None:  # the pool broke before any worker started a job
                    for job in pending:
                        yield failed(job, f"{job.capture}: the worker processes could not start")
                    return
                suspects += running
            else:  # one suspect at a time: if it breaks its pool alone, it is the culprit
                job = suspects.pop(0)
                rest, running = yield from self._round(fn, [job], 1)
                if rest or running:
                    yield failed(job, f"{job.capture}: the worker process died while inspecting it "
                                      "(killed for memory, or a crash in a native library)")

    @staticmethod
    def _round(fn, jobs, workers):
        """Run ``jobs`` on a fresh pool, yielding outcomes. When the pool broke, returns the jobs
        that never started and those that were running then (None: no job had started)."""
        ctx = multiprocessing.get_context("spawn")
        started = ctx.SimpleQueue()  # put() is synchronous: an announcement survives the worker's death
        finished, broken = set(), False
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx, initializer=_init_worker,
                                 initargs=(started,)) as pool:
            futures = {pool.submit(_announced, fn, job): job for job in jobs}
            for future in as_completed(futures):
                job = futures[future]
                try:
                    outcome = future.result()
                except BrokenProcessPool:
                    broken = True
                    continue
                except Exception as exc:  # noqa: BLE001 - pickling and the like: this job's error
                    outcome = failed(job, f"{job.capture}: {type(exc).__name__}: {exc}")
                finished.add(job.index)
                yield outcome
        if not broken:
            return [], []
        announced = set()
        while not started.empty():
            announced.add(started.get())
        left = [j for j in jobs if j.index not in finished]
        running = [j for j in left if j.index in announced]
        if not running and not finished:
            return left, None
        return [j for j in left if j.index not in announced], running


# ------------------------------------------------------------------ Ray
RAY_CLIENT_ATTEMPTS = 4
"""Connections tried for a ``ray://`` address before the batch gives up. The head starts one server
process per connection, and that process sometimes dies as it is forked (Ray issue #63202, open in
Ray 2.60: the proxy forks while its gRPC threads are busy); that fails this connection only, with
"Initialization failure from server", after Ray's 30 s wait for the dead server. A new connection
gets a new server. An unreachable head is not tried again."""


def _ray_reason(exc: BaseException) -> str:
    """Why Ray could not be started or reached, in one line.

    Ray's messages may be a heading over a server-side traceback ("Initialization failure from
    server:" ... "RuntimeError: Starting Ray client server failed. ..."): the heading and the
    traceback's last line are kept.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"


def _head_failed_to_serve(exc: BaseException) -> bool:
    """Whether a Ray Client connection failed on the head's side after it was accepted (its
    per-connection server did not start): another connection may succeed."""
    return "Initialization failure from server" in str(exc)


def init_with_retries(init, attempts: int, notify, where: str):
    """Call ``init()`` (a connection to Ray) up to ``attempts`` times while it fails on the head's
    side (:func:`_head_failed_to_serve`), telling ``notify`` of each new try; any other failure, or
    the last, is an :class:`InputError` of ``--executor`` naming ``where``."""
    for attempt in range(1, attempts + 1):
        try:
            return init()
        except Exception as exc:  # noqa: BLE001 - Ray raises several types for an unreachable cluster
            if attempt < attempts and _head_failed_to_serve(exc):
                notify(f"Ray Client: the head at {where} could not start this connection's server "
                       f"({_ray_reason(exc)}; Ray issue #63202): connecting again ({attempt + 1}/{attempts})")
                continue
            tries = f" after {attempt} connections" if attempt > 1 else ""
            raise InputError("--executor", f"cannot start or reach Ray at {where}{tries} "
                                           f"({_ray_reason(exc)})") from None


def _quiet(line: str) -> None:
    """The default ``notify``: the batch layer prints nothing itself (the command decides)."""


class RayExecutor:
    """One Ray task (``threads`` CPUs) per capture; at most ``jobs`` in flight when given.

    ``notify(line)`` hears of each Ray Client connection tried again (:data:`RAY_CLIENT_ATTEMPTS`;
    the ``inspect`` command prints it on standard error).
    """

    def __init__(self, address: str | None, jobs: int | None, threads: int = 1, notify=_quiet):
        self.address, self.jobs, self.threads, self.notify = address, jobs, int(threads), notify
        self.description = f"Ray ({address or 'local'})"
        self.workers = jobs

    def _connect(self):
        try:
            # lazy: Ray is an optional extra; the core and local batches run without it
            import ray
        except ImportError:
            raise InputError("--executor", "Ray is not installed (pip install 'lens-metrology[ray]')") from None
        if ray.is_initialized():
            return ray, False
        extra = {} if self.address else {"include_dashboard": False}  # a Ray instance started for this run
        client = bool(self.address and self.address.startswith("ray://"))
        init_with_retries(lambda: ray.init(address=self.address, log_to_driver=False, **extra),
                          RAY_CLIENT_ATTEMPTS if client else 1, self.notify, self.address or "local")
        return ray, True

    def run(self, fn, jobs):
        ray, connected_here = self._connect()
        try:
            self.workers = self.jobs or max(1, int(ray.cluster_resources().get("CPU", 1)) // self.threads)
            task = ray.remote(num_cpus=self.threads, max_retries=0)(fn)
            waiting, in_flight = list(jobs), {}
            while waiting or in_flight:
                while waiting and (self.jobs is None or len(in_flight) < self.jobs):
                    job = waiting.pop(0)
                    in_flight[task.remote(replace(job, tiles_on_ray=True))] = job
                done, _ = ray.wait(list(in_flight), num_returns=1)
                job = in_flight.pop(done[0])
                try:
                    yield ray.get(done[0])
                except ray.exceptions.RayError as exc:
                    text = str(exc).strip().splitlines()
                    yield failed(job, f"{job.capture}: Ray task failed ({text[0] if text else type(exc).__name__})")
        finally:
            if connected_here:
                ray.shutdown()
