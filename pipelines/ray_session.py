"""Starting or joining Ray: the one way every job (bootstrap, training, rounds) does it.

- Ray already initialised by the caller (a test, a notebook, the rounds loop around a job): used
  as it is.
- RAY_ADDRESS set (`ray job submit` sets it for the driver): join that cluster, and only that one.
- Otherwise: start a local instance (`address="local"`) with at least the logical CPUs the job
  asks for. A plain `ray.init()` would instead join whatever cluster `ray start` last left on the
  machine (a stray one, somebody else's), and `num_cpus` given while joining raises.
"""

from __future__ import annotations

import math
import os


def start_or_join_ray(cpus_wanted: float, *, log_to_driver: bool = False) -> bool:
    """Join RAY_ADDRESS or start a local Ray with at least `cpus_wanted` logical CPUs; True when
    this call did so (the caller then shuts it down), False when Ray was already initialised.

    A local instance gets at least what the job asks for even on a smaller machine: an actor or a
    Train worker holds its CPUs for its lifetime, and the tasks beside it would otherwise never
    find room."""
    import ray

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=log_to_driver)
        return True
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, math.ceil(cpus_wanted)), include_dashboard=False,
             log_to_driver=log_to_driver)
    return True
