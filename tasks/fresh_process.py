"""A call made in a newly spawned Python process, so that what the caller's process ran before
cannot sway it.

The interleaved benchmark runs this way. Measured in the process that had just exported,
converted and validated the variants (the CLI, or `airflow dags test` running every task in one
process), the demo's INT8 model read 10-20% slower than in fresh processes, which agreed with
each other within 1.3%: thread pools that earlier work left behind, a heap grown and fragmented by
conversions. A Celery or LocalExecutor worker's task process has a history of its own as well.

`TFOPT_BENCHMARK_PROCESS=same` runs the call in the caller's process instead (saves the child's
imports, some 5 s for TensorFlow; the figures then carry the process's history).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

from tasks.errors import UserInputError

logger = logging.getLogger(__name__)
T = TypeVar("T")

PROCESS_ENV = "TFOPT_BENCHMARK_PROCESS"
FRESH, SAME = "fresh", "same"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def wanted() -> bool:
    """Whether measurements run in a fresh process (`TFOPT_BENCHMARK_PROCESS`, default fresh).

    Raises:
        UserInputError: the variable holds something other than `fresh` or `same`.
    """
    value = os.environ.get(PROCESS_ENV, "").strip().lower() or FRESH
    if value not in (FRESH, SAME):
        raise UserInputError(f"{PROCESS_ENV}={value!r}: use {FRESH!r} (default) or {SAME!r}")
    return value == FRESH


def call(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a newly spawned process that uses this process's S3 settings and log level
    (MLflow's settings travel in the environment, which the child inherits); its logs go to this
    process's stderr. `fn` and the arguments must pickle; so must what it returns or raises.

    Raises:
        Whatever `fn` raised in the child; `concurrent.futures.process.BrokenProcessPool` when
        the child died (killed, out of memory).
    """
    from tasks import storage

    level = logging.getLogger().getEffectiveLevel()
    settings = storage.current_s3_settings()
    context = multiprocessing.get_context("spawn")
    logger.info("%s: in a fresh process", getattr(fn, "__name__", fn))
    with ProcessPoolExecutor(
        max_workers=1, mp_context=context, initializer=_start_child, initargs=(settings, level)
    ) as pool:
        return pool.submit(fn, *args).result()


def _start_child(settings: Any, level: int) -> None:
    """The child's set-up: the parent's S3 settings and log level, logs to stderr."""
    from tasks import storage

    logging.basicConfig(level=level, format=LOG_FORMAT)
    for noisy in ("botocore", "urllib3", "absl", "tensorflow", "h5py", "matplotlib"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    storage.configure_s3(settings)
