"""A trainer started by a supervisor dies with it.

``s3t serve`` runs retrains as child processes (``s3t/service/retrainer.py``). If the server
is killed (``kill -9``: no cleanup runs), its child must not train on alone. The supervisor
names itself in the child's environment (:data:`PARENT_ENV`); the child, at start-up, asks the
kernel to kill it when its parent goes (Linux ``prctl(PR_SET_PDEATHSIG)``; the signal fires
when the thread that started it ends, and the retrainer's thread waits for the child), then
checks that the parent did not go before that. Nothing is done in the parent between
``fork`` and ``exec`` (no ``preexec_fn``, unsafe in a threaded server). A run is crash-safe
at every point, so a child killed this way leaves nothing to repair beyond what opening the
run sweeps.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

PARENT_ENV = "S3T_PARENT_PID"
NICE_ENV = "S3T_CHILD_NICE"
PR_SET_PDEATHSIG = 1


def child_environment(nice: int) -> dict[str, str]:
    """The environment a supervised child is started with."""
    return {**os.environ, PARENT_ENV: str(os.getpid()), NICE_ENV: str(nice)}


def follow_parent() -> None:
    """In a child started with :func:`child_environment`: be niced as asked and die with the
    parent. Does nothing in a process started otherwise."""
    parent = os.environ.pop(PARENT_ENV, None)
    nice = os.environ.pop(NICE_ENV, None)
    if nice and nice.lstrip("-").isdigit():
        with contextlib.suppress(OSError):
            os.nice(int(nice))
    if not parent or not parent.isdigit():
        return
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != int(parent):  # the parent died before the request took effect
        os._exit(1)
