"""The run's files on disk, each named by the ledger and erased durably when it says so:
stage directories (safetensors weights plus a JSON card, each checked by sha256) and the
feature-cache blocks a trainer spills.

This module moves bytes, never tensors, so the deletion path needs no torch: a stage's
weights are serialised by ``s3t.models.stage_weights``. A stage's bytes are hashed as they
are read and only those same bytes are handed on, so what is used is what was checked.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from s3t.run.faults import fault_point
from s3t.run.locks import is_locked

ADAPTER_FILE = "adapter.safetensors"
HEAD_FILE = "head.safetensors"
META_FILE = "meta.json"
#: The files of every stage: its weights (``s3t.models.stage_weights``) and its card.
STAGE_FILES = (ADAPTER_FILE, HEAD_FILE, META_FILE)


class IntegrityError(RuntimeError):
    """A stage file is missing or differs from what the ledger recorded; ``key``: the stage."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(path: Path) -> None:
    """Make a rename or removal in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_STAGE_KEY = re.compile(r"\d+-\d+v\d+(?:_\d+v\d+)*")
_SHARD = re.compile(r"0|[1-9]\d*")
_LEFTOVER = re.compile(r"(\d+-\d+v\d+(?:_\d+v\d+)*)\.(?:tmp|erasing-[0-9a-f-]+)")


class UnsafeRunError(RuntimeError):
    """The run directory holds a symbolic link where s3t writes or deletes: refusing to act."""


def refuse_links(paths: list[Path]) -> None:
    """Raise :class:`UnsafeRunError` naming the first of ``paths`` (symbolic links found where
    s3t writes or deletes: following one could touch files outside the run)."""
    if paths:
        raise UnsafeRunError(
            f"{paths[0]} is a symbolic link: s3t never writes or deletes through links in a run "
            "directory; replace it with the real file or directory (or remove it) and retry")


class StageStore:
    """Stage directories ``<root>/<shard>/<key>/``. Nothing here follows a symbolic link:
    :meth:`check_safe` refuses a tree that holds one, and erasure renames a directory
    aside (atomic: of two concurrent erasers exactly one wins) before removing it."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, shard: int, key: str) -> Path:
        return self.root / str(shard) / key

    def check_safe(self) -> None:
        """Raise :class:`UnsafeRunError` if ``stages/`` or anything in it down to the stage
        directories is a symbolic link (deleting through one could remove files outside the run)."""
        links = [self.root] if self.root.is_symlink() else []
        if not links and self.root.is_dir():
            for shard_dir in self.root.iterdir():
                if shard_dir.is_symlink():
                    links.append(shard_dir)
                elif shard_dir.is_dir():
                    links += [d for d in shard_dir.iterdir() if d.is_symlink()]
        refuse_links(links)

    def write(self, shard: int, key: str, blobs: dict[str, bytes], meta: dict) -> dict[str, str]:
        """Write a stage atomically (temp dir, fsync, rename); return ``{file: sha256}``.

        ``blobs`` maps file names (e.g. ``adapter.safetensors``) to their serialised bytes."""
        final = self.path(shard, key)
        tmp = final.with_name(final.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        contents = {**blobs, META_FILE: json.dumps(meta, indent=2, sort_keys=True).encode()}
        hashes = {}
        for name, data in contents.items():
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            hashes[name] = hashlib.sha256(data).hexdigest()
        fsync_dir(tmp)
        fault_point("store:mid-write")
        if final.exists():
            self.erase(shard, key)
        os.replace(tmp, final)
        fsync_dir(final.parent)
        return hashes

    def read(self, shard: int, key: str, files: dict[str, str]) -> dict[str, bytes]:
        """Every file of a stage, each checked against the hash the ledger recorded."""
        if set(files) != set(STAGE_FILES):
            raise IntegrityError(
                f"stage {key}: the ledger records the files {sorted(files) or 'none'}, but a "
                f"stage has exactly {', '.join(STAGE_FILES)}: its ledger record was altered; "
                "refusing to use it (`s3t retrain RUN` quarantines and rebuilds it)", key)
        where = self.path(shard, key)
        out = {}
        for name, expected in files.items():
            path = where / name
            try:
                if path.is_symlink():
                    raise FileNotFoundError(path)
                data = path.read_bytes()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                raise IntegrityError(f"stage {key}: file {path} is missing; run `s3t retrain`",
                                     key) from None
            actual = hashlib.sha256(data).hexdigest()
            if actual != expected:
                raise IntegrityError(
                    f"stage {key}: {path} has sha256 {actual[:12]}..., the ledger recorded "
                    f"{expected[:12]}...: the file was altered; refusing to use it "
                    "(`s3t retrain RUN` rebuilds it)", key)
            out[name] = data
        return out

    def verify(self, shard: int, key: str, files: dict[str, str]) -> None:
        """Raise :class:`IntegrityError` unless every file matches its recorded hash."""
        self.read(shard, key, files)

    def erase(self, shard: int, key: str, sync: bool = True) -> bool:
        """Remove a stage's files; ``sync`` makes the removal durable now. Returns False if
        there was nothing to remove (e.g. another process erased it first)."""
        where = self.path(shard, key)
        if not _rename_aside_and_remove(where, key):
            return False
        if sync:
            fsync_dir(where.parent)
        return True

    def erase_leftover(self, path: Path) -> None:
        """Remove a half-written or half-erased stage directory (see :meth:`leftovers`)."""
        _rename_aside_and_remove(path, path.name.split(".")[0])

    def erase_all(self, stages: list[tuple[int, str]], sync: bool = True) -> None:
        """Remove several stages, with one directory sync per shard instead of one per stage
        (``sync=False``: none; a deletion does so, as the ledger named the stages erased
        durably before, and opening the run removes any directory a power loss brings back)."""
        for n, (shard, key) in enumerate(stages):
            self.erase(shard, key, sync=False)
            if n == 0 and len(stages) > 1:
                fault_point("forget:mid-erase")
        for shard in sorted({shard for shard, _ in stages} if sync else ()):
            if self.path(shard, "").is_dir():
                fsync_dir(self.path(shard, ""))

    def on_disk(self) -> list[tuple[int, str]]:
        """Every stage directory present, as (shard, key)."""
        return [(shard, entry.name) for shard, entry in self._entries()
                if _STAGE_KEY.fullmatch(entry.name) and entry.is_dir()]

    def leftovers(self) -> list[Path]:
        """Half-written (``<key>.tmp``) and half-erased (``<key>.erasing-*``) directories."""
        return [entry for _, entry in self._entries()
                if _LEFTOVER.fullmatch(entry.name) and entry.is_dir()]

    def strays(self, live: dict[tuple[int, str], list[str]]) -> list[Path]:
        """Everything under the store that is none of: a shard folder ``<root>/<n>`` (``n``
        written without leading zeros), a stage directory in it (reported by :meth:`on_disk`
        when not live), a half-made one (:meth:`leftovers`), or a file that the ledger records
        for the live stage whose directory holds it. ``live`` maps (shard, key) to those file
        names. Only the topmost path of each stray subtree is listed; links are never followed.
        """
        if not self.root.is_dir() or self.root.is_symlink():
            return []
        found = [entry for entry in sorted(self.root.iterdir()) if not _is_shard_dir(entry)]
        for shard, entry in self._entries():
            named = _STAGE_KEY.fullmatch(entry.name) or _LEFTOVER.fullmatch(entry.name)
            if not named or entry.is_symlink() or not entry.is_dir():
                found.append(entry)
            elif (shard, entry.name) in live:
                recorded = set(live[(shard, entry.name)])
                found += [f for f in _listing(entry)
                          if f.name not in recorded or f.is_symlink() or not f.is_file()]
        return found

    def _entries(self) -> list[tuple[int, Path]]:
        found = []
        if self.root.is_dir():
            for shard_dir in sorted(self.root.iterdir()):
                if _is_shard_dir(shard_dir):
                    found += [(int(shard_dir.name), d) for d in sorted(shard_dir.iterdir())]
        return found


def _is_shard_dir(path: Path) -> bool:
    """``<root>/<n>`` exactly as s3t names it (``0``, ``12``; never ``00`` or ``+1``)."""
    return (_SHARD.fullmatch(path.name) is not None and path.is_dir()
            and not path.is_symlink())


def _listing(path: Path) -> list[Path]:
    """A folder's entries, sorted; none if another process removed it meanwhile."""
    try:
        return sorted(path.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def tree_summary(path: Path) -> tuple[int, list[str]]:
    """How many files a stray path holds (itself, if a file) and the names of the stage-key
    directories inside it, without following links: to say what a stray entry is."""
    if path.is_symlink() or not path.is_dir():
        return 1, []
    files, keys = 0, []
    for folder, dirs, names in os.walk(path):
        files += len(names)
        keys += [d for d in dirs if _STAGE_KEY.fullmatch(d)]
        files += sum(1 for d in dirs if (Path(folder) / d).is_symlink())
    return files, sorted(set(keys))


def _rename_aside_and_remove(path: Path, key: str) -> bool:
    """Rename ``path`` to a name of this process's own, then remove it: the rename is atomic
    (of two concurrent erasers exactly one wins) and moves a link, never follows it."""
    aside = path.with_name(f"{key}.erasing-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    _remove_tree(aside)
    return True


def _remove_tree(path: Path) -> None:
    """Remove a directory tree we own, tolerating another process removing it meanwhile."""
    def ignore_missing(_func: object, _path: str, info: tuple) -> None:
        if not isinstance(info[1], FileNotFoundError):
            raise info[1]

    shutil.rmtree(path, onerror=ignore_missing)


FEATURE_CACHE_DIR = "feature-cache"
_CELL_BLOCK = re.compile(r"cell-(\d+)-(\d+)-v(\d+)")
_BLOCK = re.compile(r"(?:cell-(?P<shard>\d+)-(?P<slice>\d+)|[a-z]+)-v(?P<version>\d+)(?:\.tmp)?")
_BLOCK_ARRAY = re.compile(r"(?:g\d+|targets)\.bin")
LOCK_FILE = ".lock"


class FeatureFiles:
    """Feature-cache blocks spilled to disk: ``<run>/feature-cache/<owner>/<block>-v<version>``.

    Each training process spills into its own owner folder and holds an exclusive ``flock``
    on its ``.lock`` file while it lives, so a folder whose lock can be taken belongs to a
    process that is gone. Blocks of a cell that a deletion changed hold a deleted sample's
    input in derived form: ``forget`` erases them in whatever process runs it, ``sweep``
    finds them again and ``audit`` reports them. A block is written as ``<name>.tmp`` and
    renamed; its writer then re-reads the cell's version and removes it if a deletion came
    in between, so ``forget`` leaves half-written folders to their writer.
    """

    def __init__(self, run_dir: str | Path):
        self.root = Path(run_dir) / FEATURE_CACHE_DIR

    def check_safe(self) -> None:
        """Raise :class:`UnsafeRunError` if the cache folder or an owner folder is a link."""
        links = [self.root] if self.root.is_symlink() else []
        if not links and self.root.is_dir():
            links = [owner for owner in self.root.iterdir() if owner.is_symlink()]
        refuse_links(links)

    @staticmethod
    def block_name(block: Any, version: Any) -> str:
        if isinstance(block, tuple):
            return f"cell-{block[0]}-{block[1]}-v{version}"
        return f"{block}-v{version}"

    def claim_owner_dir(self) -> tuple[Path, int]:
        """A new owner folder for this process, locked; returns it and the lock's descriptor."""
        owner = self.root / f"{os.getpid()}-{os.urandom(4).hex()}"
        owner.mkdir(parents=True)
        fd = os.open(owner / LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return owner, fd

    def cell_blocks(self) -> list[tuple[Path, tuple[int, int], int]]:
        """Every finished spilled cell block: (folder, (shard, slice), version)."""
        found = []
        for path in sorted(self.root.glob("*/cell-*")):
            match = _CELL_BLOCK.fullmatch(path.name)
            if match:
                found.append((path, (int(match[1]), int(match[2])), int(match[3])))
        return found

    def stale(self, versions: dict[tuple[int, int], int]) -> list[Path]:
        """Spilled blocks of the cells in ``versions`` at an older version than the one given."""
        return [path for path, cell, version in self.cell_blocks()
                if cell in versions and version < versions[cell]]

    def erase_stale(self, versions: dict[tuple[int, int], int],
                    sync: bool = True) -> list[Path]:
        """Remove :meth:`stale` blocks (``sync``: durably); return what was removed."""
        removed = self.stale(versions)
        for path in removed:
            shutil.rmtree(path, ignore_errors=True)
        for owner in {p.parent for p in removed} if sync else ():
            if owner.is_dir():
                fsync_dir(owner)
        return removed

    def strays(self, versions: dict[tuple[int, int], int]) -> list[Path]:
        """Everything under the cache folder that is no part of a block at a version the
        ledger has seen: files beside the owner folders, anything in an owner folder but its
        ``.lock`` and blocks (finished or ``.tmp``), anything in a block but its ``*.bin``
        arrays, and blocks of cells the run does not have or at versions it never reached.
        Stale blocks (:meth:`stale`) and orphaned folders (:meth:`orphans`) are reported on
        their own. Links are never followed."""
        if not self.root.is_dir() or self.root.is_symlink():
            return []
        found = []
        for owner in _listing(self.root):
            if owner.is_symlink() or not owner.is_dir():
                found.append(owner)
                continue
            for entry in _listing(owner):
                match = _BLOCK.fullmatch(entry.name)
                if entry.name == LOCK_FILE and entry.is_file() and not entry.is_symlink():
                    continue
                unknown_cell = match is not None and match["shard"] is not None and int(
                    match["version"]) > versions.get((int(match["shard"]), int(match["slice"])), -1)
                if match is None or unknown_cell or entry.is_symlink() or not entry.is_dir():
                    found.append(entry)
                else:
                    found += [f for f in _listing(entry) if f.is_symlink()
                              or not f.is_file() or not _BLOCK_ARRAY.fullmatch(f.name)]
        return found

    def orphans(self) -> list[Path]:
        """Owner folders whose process is gone (its lock is free, or it never took one)."""
        found = []
        for owner in sorted(self.root.glob("*")):
            if owner.is_dir() and not is_locked(owner / LOCK_FILE):
                found.append(owner)
        return found

    def erase_orphans(self) -> list[Path]:
        """Remove the spill folders of processes that no longer run (e.g. crashed trainers)."""
        removed = self.orphans()
        for owner in removed:
            shutil.rmtree(owner, ignore_errors=True)
        return removed
