"""``peerkit check --cluster ADDRESS``: the parallel search's workers on a Dask cluster.

One job: a `peerkit.checker.parallel.Pool` whose workers are Dask actors, one per worker process
of an existing ``distributed`` cluster (a scheduler at ADDRESS and its workers, on as many
machines as you like; README, "Checking on a cluster"). Dask was chosen over Ray by measuring
both on this model (benchmarks/distributed.py; the figures are in README).

Dask is an optional dependency (``pip install "peerkit[distributed]"``); it is imported only
here, and only when a cluster is asked for. May import: the standard library, ``peerkit.checker``
and ``distributed``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

from .checker.api import Model
from .checker.parallel import Partition, WorkerError

INSTALL_HINT = 'the cluster mode needs Dask: pip install "peerkit[distributed]"'


class ClusterUnavailable(Exception):
    """No cluster to run on: Dask is not installed, or nothing answers at the address."""


class DaskPool:
    """One `Partition` actor on each worker process of a Dask cluster.

    The workers rebuild the model by calling `model_factory`, so it must be picklable by
    cloudpickle (``functools.partial(PeeringModel, config, bugs)`` is). Each worker gets its own
    hash salt, so the partitions use the portable fingerprint (checker/parallel.py).
    """

    def __init__(self, model_factory: Callable[[], Model[Any, Any]], address: Any,
                 timeout: float = 30.0) -> None:
        """`address`: the scheduler's address, or a ``distributed.Client`` to use as it is."""
        try:
            # untyped, and absent without the extra: reached through importlib, as Any
            client_class: Any = importlib.import_module("distributed").Client
        except ImportError as exc:
            raise ClusterUnavailable(INSTALL_HINT) from exc
        self._own_client = isinstance(address, str)
        try:
            self.client = (client_class(address, timeout=timeout) if self._own_client
                           else address)
        except OSError as exc:
            raise ClusterUnavailable(f"no Dask scheduler answers at {address}: {exc}") from exc
        workers = sorted(self.client.scheduler_info()["workers"])
        if not workers:
            self.close()
            raise ClusterUnavailable(f"the Dask cluster at {address} has no workers")
        count = len(workers)
        futures = [
            self.client.submit(Partition, model_factory, me, count, True, actor=True,
                               workers=[where], allow_other_workers=False, pure=False)
            for me, where in enumerate(workers)
        ]
        try:
            self.actors = [future.result() for future in futures]
        except Exception as exc:
            self.close()
            raise WorkerError(f"a Dask worker could not build the model: {exc}") from exc

    @property
    def workers(self) -> int:
        return len(self.actors)

    def call_all(self, method: str, args: Sequence[tuple[Any, ...]]) -> list[Any]:
        pending = [getattr(actor, method)(*arg)
                   for actor, arg in zip(self.actors, args, strict=True)]
        try:
            return [future.result() for future in pending]
        except Exception as exc:
            raise WorkerError(f"a Dask worker failed in {method}: {exc}") from exc

    def close(self) -> None:
        if self._own_client:
            self.client.close()
