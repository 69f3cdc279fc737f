"""Named fault points, for crash tests and the fault campaign (``bench/faults.py``).

``S3T_FAULT`` lists points, comma-separated: ``NAME`` makes the process exit at once with
status :data:`FAULT_EXIT` when it reaches that point (as a kill -9 would: no cleanup, no
flush), ``NAME=SECONDS`` makes it sleep there (to open a race window). Unset, a fault point
costs one dictionary lookup.
"""

from __future__ import annotations

import os
import time

FAULT_ENV = "S3T_FAULT"
FAULT_EXIT = 86

#: Every point in the code, in the order a forget or a training run passes them.
POINTS = (
    "forget:before-commit",        # inside the deletion's transaction, before COMMIT
    "forget:after-commit",         # committed, WAL not yet scrubbed
    "forget:after-scrub",          # WAL scrubbed, no file erased yet
    "forget:mid-erase",            # the first invalidated stage's files erased, not the rest
    "forget:after-erase",          # stage files erased, spilled features not yet
    "forget:before-certificate",   # everything erased, certificate not written
    "forget:mid-certificate",      # certificate written to its temporary file, not renamed
    "store:mid-write",             # a stage's files written to <key>.tmp, not renamed
    "train:after-stage-write",     # a stage's files in place, not committed
    "train:after-stage-commit",    # a stage committed live, the next not started
    "train:before-routes",         # every stage trained, routes not refreshed
    "retrain:after-quarantine",    # damaged stages taken out, nothing trained yet
)


def fault_point(name: str) -> None:
    """Exit or pause here if ``S3T_FAULT`` names this point."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    for entry in spec.split(","):
        point, _, seconds = entry.strip().partition("=")
        if point == name:
            if seconds:
                time.sleep(float(seconds))
            else:
                os._exit(FAULT_EXIT)
