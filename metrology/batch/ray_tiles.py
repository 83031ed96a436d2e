"""A full-field capture's tile groups as Ray tasks (issue 18: scale-out below the capture).

In a batch on Ray (``--executor ray`` or ``ray://``) each capture is one Ray task
(:class:`metrology.batch.executors.RayExecutor`). A full-field capture's tiles are independent fits
(:mod:`metrology.pipeline_field`): inside that task, :class:`RayTiles` submits them as groups, one
Ray task per group, so that the tiles of one capture spread over the cluster's nodes. The capture's
task waits for them (Ray lends its CPUs to other tasks while it waits); the field model and the
report are made where the capture runs. Each tile is fitted with the batch's ``--threads``, as in a
local run, so the documents are the same (``tests/test_ray_executor.py``).
"""

from __future__ import annotations


class RayTiles:
    """A tile executor (:func:`metrology.pipeline_field.measure_field`'s ``workers``) on the Ray
    cluster this process belongs to: one task of ``threads`` CPUs per group of tiles.

    Parameters
    ----------
    threads : int, optional
        torch and BLAS threads of each tile fit, and the CPUs each task reserves (default 1).
    """

    description = "Ray tasks"

    def __init__(self, threads: int | None = None):
        self.threads = max(1, int(threads or 1))

    @property
    def slots(self) -> int:
        """Tile groups to make: the cluster's CPUs over the CPUs a task reserves."""
        import ray  # lazy: Ray is an optional extra; this runs only inside a Ray task

        return max(1, int(ray.cluster_resources().get("CPU", 1)) // self.threads)

    def map(self, fn, args: list) -> list:
        """``[fn(*a) for a in args]``, each call one Ray task; in order. A task's failure raises
        here (the capture's error, as any failure of its fit)."""
        import ray  # lazy: Ray is an optional extra; this runs only inside a Ray task

        task = ray.remote(num_cpus=self.threads, max_retries=0)(fn)
        return ray.get([task.remote(*a) for a in args])
