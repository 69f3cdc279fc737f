"""The run card (``s3t.json``): a run's config, label names, task, backbone, orderings and
numeric environment (``numeric``, see ``run/numeric.py``).

Written atomically; read and checked field by field (a card of the wrong shape is a damaged
run, never a traceback later). Only serving choices may change after a run is created
(``Run.set_serving``); a process that has the run open follows such a change at its
next read of the routes (``card_stamp``), so a running server picks up ``s3t configure``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path

from s3t.config import NO_VALIDATION_ENSEMBLE, SERVING_FIELDS, ConfigError, S3TConfig
from s3t.run.files import fsync_dir, refuse_links, sha256_file
from s3t.run.numeric import LEGACY, NumericEnv

RUN_FILE = "s3t.json"
LEDGER_FILE = "ledger.sqlite"  # Ledger.FILE (the card and the ledger make a run together)


#: A run card being rewritten (``write_card``): swept by ``Run.open`` when no writer runs.
CARD_LEFTOVER = re.compile(rf"{re.escape(RUN_FILE)}\.\d+\.tmp")


def write_card(path: Path, info: dict) -> None:
    """Write the run card atomically (a temporary file beside it, fsynced, renamed over it):
    a crash leaves the old card or the new one, never half of one."""
    card, tmp = path / RUN_FILE, path / f"{RUN_FILE}.{os.getpid()}.tmp"
    refuse_links([p for p in (card, tmp) if p.is_symlink()])
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(info, indent=2))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, card)
    fsync_dir(path)


def sweep_card_leftovers(path: Path) -> None:
    """Remove what a ``write_card`` killed before its rename left (only while no writer
    runs): regular files named like its temporary file, never links or look-alikes."""
    for leftover in path.glob(f"{RUN_FILE}.*.tmp"):
        if CARD_LEFTOVER.fullmatch(leftover.name) and not leftover.is_symlink():
            leftover.unlink(missing_ok=True)


def card_stamp(path: Path) -> tuple[int, int, int] | None:
    """Which version of the card is on disk (a rewrite renames a new file over it, so its
    inode changes); None unless it is a regular file (a link, a pipe: never followed)."""
    try:
        st = (path / RUN_FILE).lstat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size) if stat.S_ISREG(st.st_mode) else None


class NotARunError(FileNotFoundError):
    """The directory does not hold an s3t run."""


#: Config fields whose default changed after runs were written: a card without the field was
#: written, and served, under the old default, so it keeps that value.
#: ``torch_threads`` 0: the process's own count, as such runs trained (``run/numeric.py``).
#: ``ensemble`` 'mean': runs before the field served every shard with the same weight.
#: ``allocation`` 'equal': runs before the field trained one layer group per stage.
#: ``anchor`` False: runs before the field placed deletable=false samples in one cell each.
DEFAULTS_BEFORE_FIELD = {"serve_orderings": "best", "torch_threads": 0, "ensemble": "mean",
                         "allocation": "equal", "anchor": False}


def read_card(run_file: Path) -> tuple[dict, S3TConfig]:
    """The run card and its config, checked field by field: a card of the wrong shape is a
    damaged run (``NotARunError``), never a traceback much later."""
    try:
        info = json.loads(run_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise NotARunError(f"{run_file} is damaged: {err}") from None
    problem = None
    if not isinstance(info, dict):
        problem = f"expected a JSON object, got {type(info).__name__}"
    elif not isinstance(info.get("config"), dict):
        problem = f"`config` must be an object, got {type(info.get('config')).__name__}"
    if problem is None:
        try:
            config = S3TConfig.from_dict({**DEFAULTS_BEFORE_FIELD, **info["config"]}).validate()
        except (TypeError, ValueError) as err:
            problem = f"`config`: {err}"
    if problem is None:
        labels, orderings = info.get("label_names"), info.get("orderings")
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            problem = "`label_names` must be a list of strings"
        elif not isinstance(orderings, list) or not orderings or not all(
                isinstance(o, list) and sorted(o) == list(range(config.slices)) for o in orderings):
            problem = f"`orderings` must be a non-empty list of orderings of 0..{config.slices - 1}"
        elif any(not isinstance(info.get(k, ""), str)
                 for k in ("task", "model_sha256", "signing_key")):
            problem = "`task`, `model_sha256` and `signing_key` must be strings"
    if problem is None and "numeric" in info:
        try:
            env = NumericEnv.from_dict(info["numeric"])
        except ValueError as err:
            problem = str(err)
        else:
            if env.torch_threads != config.torch_threads:
                problem = (f"`numeric.torch_threads` ({env.torch_threads}) disagrees with "
                           f"`config.torch_threads` ({config.torch_threads})")
    if problem is not None:
        raise NotARunError(f"{run_file} is damaged: {problem}")
    return info, config


def serving_config(config: S3TConfig, choices: dict[str, str], has_validation: bool) -> S3TConfig:
    """``config`` with serving choices changed (``SERVING_FIELDS``: every live stage is exact
    whichever serve, however the shards are weighed), checked: all or nothing."""
    if not set(choices) <= set(SERVING_FIELDS):
        raise ValueError(f"only {', '.join(SERVING_FIELDS)} change on a trained run")
    changed = S3TConfig.from_dict({**config.to_dict(), **choices}).validate()
    if changed.ensemble == "validation" and not has_validation:
        raise ConfigError("ensemble", NO_VALIDATION_ENSEMBLE)
    return changed


def card_numeric(info: dict) -> NumericEnv:
    """The run's numeric environment (a card read by ``read_card``); :data:`LEGACY` for a
    card written before the field."""
    return NumericEnv.from_dict(info["numeric"]) if "numeric" in info else LEGACY


_FINGERPRINTS: dict[tuple, str] = {}


def model_fingerprint(model_dir: str | Path) -> str:
    """sha256 over the backbone's weight files: a run refuses a different backbone.

    Hashed once per process and file state (path, inode, size, mtime): a process that opens
    several runs on one backbone, or reloads one, does not re-read hundreds of megabytes.
    """
    root = Path(model_dir)
    files = (sorted(root.glob("*.safetensors")) or sorted(root.glob("*.bin"))
             or sorted(root.glob("*.gguf")))
    state = tuple((str(f.resolve()), f.stat().st_ino, f.stat().st_size, f.stat().st_mtime_ns)
                  for f in files)
    if state not in _FINGERPRINTS:
        joined = "".join(f"{f.name}:{sha256_file(f)}" for f in files)
        _FINGERPRINTS[state] = hashlib.sha256(joined.encode()).hexdigest()
    return _FINGERPRINTS[state]


def refuse_existing(path: str | Path) -> None:
    """Raise ``FileExistsError`` if ``path`` already holds a run (never overwrite one)."""
    path = Path(path)
    card, ledger = (path / RUN_FILE).exists(), (path / LEDGER_FILE).exists()
    if card and ledger:
        raise FileExistsError(f"{path} already holds an s3t run: load it with "
                              "S3T.load / `s3t status`, or choose another --out")
    if card or ledger:
        there, missing = (RUN_FILE, LEDGER_FILE) if card else (LEDGER_FILE, RUN_FILE)
        raise FileExistsError(f"{path} holds {there} without its {missing}: a run whose "
                              "creation was interrupted (nothing was trained); delete the "
                              "directory and train again, or choose another --out")
