"""Batch inspection: many captures, in parallel processes or on Ray, resumable.

* :mod:`metrology.batch.jobs` -- the captures of a batch (paths, folders, CSV manifest) and the
  results already done (resume by input hashes).
* :mod:`metrology.batch.run` -- one capture in a worker (:func:`~metrology.batch.run.run_job`),
  verdict lines, the summary table and the batch's exit code.
* :mod:`metrology.batch.executors` -- this process, a local process pool, or Ray.

:func:`run_batch` ties them together; ``metrology inspect`` calls it when given more than one
capture, a folder or a manifest (docs/batch.md).
"""

from __future__ import annotations

from metrology.batch.jobs import Job, collect_jobs, completed_results, job_key  # noqa: F401
from metrology.batch.run import JobOutcome, outcome_from_document, progress_line, run_job, worst_exit_code  # noqa: F401


def run_batch(jobs, executor, *, resume: bool = True, report=print, fn=run_job) -> list:
    """Inspect every job on ``executor``; return their outcomes in job order.

    Parameters
    ----------
    jobs : list of Job
    executor : an executor of :mod:`metrology.batch.executors`
    resume : bool
        Skip the jobs whose result already exists in their output folder with the same input
        hashes and run options (reported with that result's verdict, ``skipped=True``).
    report : callable(str)
        Receives one line per capture as it finishes (default: print).
    fn : callable(Job) -> JobOutcome
        The work of one capture (default :func:`run_job`; tests substitute a failing one).
    """
    outcomes, todo = [], []
    done = {}
    if resume:
        for out_dir in sorted({j.out_dir for j in jobs}):
            done.update(completed_results(out_dir))
    for job in jobs:
        hit = done.get(job_key(job)) if done and not job.error else None
        if hit is None:
            todo.append(job)
            continue
        path, doc = hit
        outcome = outcome_from_document(job, doc, path.with_suffix(".pdf"), path, skipped=True)
        outcomes.append(outcome)
        report(progress_line(outcome, len(jobs)))
    for outcome in executor.run(fn, todo):
        outcomes.append(outcome)
        report(progress_line(outcome, len(jobs)))
    return sorted(outcomes, key=lambda o: o.index)
