"""Installed bundles on the gateway: one directory per version, an atomic `active` link, history, a lock.

Layout under the agent's state directory::

    <state_dir>/bundles/
        .lock                  flock()ed by every command that changes the store (installs are serialised)
        history.jsonl          one JSON line per activation: {"ts", "action", "version", "previous"}
        active -> 1.4.0        relative symlink, replaced atomically (symlink to a temp name, then rename)
        1.4.0/
            bundle.tar         the verified bundle file, byte for byte as installed
            installed.json     {"name", "version", "sha256", "installed_at", "source", "models"}

A version directory appears complete or not at all: it is staged under `.staging-*` and renamed into place.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.bundle.archive import Bundle, read_bundle
from edge_agent.bundle.errors import BundleError
from edge_agent.bundle.parsing import VERSION_RE
from edge_agent.bundle.signing import TrustedKeys

log = logging.getLogger(__name__)

BUNDLE_FILE = "bundle.tar"
INFO_FILE = "installed.json"
HISTORY_FILE = "history.jsonl"
ACTIVE_LINK = "active"
LOCK_FILE = ".lock"
DEFAULT_KEEP = 3


class StoreError(BundleError):
    """A store operation cannot be done (unknown version, removing the active one, no rollback target)."""


@dataclass(frozen=True)
class InstalledBundle:
    """One installed version, as recorded in its `installed.json`."""

    name: str
    version: str
    sha256: str
    installed_at: float
    source: str
    models: tuple[str, ...]
    path: Path

    @property
    def bundle_file(self) -> Path:
        return self.path / BUNDLE_FILE


def check_version(version: str) -> str:
    """A version usable as a directory name (refuses `..`, slashes, the `active` link's name, ...)."""
    if not VERSION_RE.match(version) or version in (ACTIVE_LINK, HISTORY_FILE):  # the store's own names
        raise StoreError(f"bundle version {version!r} cannot be stored: use letters, digits, '.', '_', '+', "
                         "'-' (at most 64, starting with a letter or digit)")
    return version


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class BundleStore:
    """The installed bundles under `<state_dir>/bundles`. Mutating methods expect the caller to hold
    `lock()`."""

    def __init__(self, state_dir: Path | str) -> None:
        self.state_dir = Path(state_dir)
        self.root = self.state_dir / "bundles"

    # -- locking ------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, *, wait: bool = True) -> Iterator[None]:
        """Hold the store's exclusive lock (fcntl.flock); a second caller waits (fails if `wait=False`)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                if not wait:
                    raise StoreError(f"another bundle operation (pid {holder}) holds {self.root / LOCK_FILE}"
                                     ) from exc
                log.info("waiting for another bundle operation (pid %s) to finish", holder)
                fcntl.flock(fd, fcntl.LOCK_EX)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self._remove_leftovers()
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the flock

    def _remove_leftovers(self) -> None:
        """Work files of operations that were killed (`.verify-*` extractions, `.staging-*` copies,
        `.active.*` temporary links): only operations holding the lock make them, so with it held none is in
        use. A killed install of a large bundle otherwise left its size on the disk each time."""
        for entry in self.root.iterdir():
            if entry.name.startswith((".verify-", ".staging-", f".{ACTIVE_LINK}.")):
                log.info("removing %s, left by an interrupted bundle operation", entry)
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)

    # -- reading ------------------------------------------------------------------------------------------

    def active_version(self) -> str | None:
        """The version the `active` link points at, or None when nothing is installed."""
        link = self.root / ACTIVE_LINK
        try:
            target = link.readlink()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"{link} is not a symlink ({exc.strerror})") from exc
        return target.name

    def active(self) -> InstalledBundle | None:
        version = self.active_version()
        return self.get(version) if version is not None else None

    def get(self, version: str) -> InstalledBundle:
        path = self.root / check_version(version)
        info_file = path / INFO_FILE
        try:
            info = json.loads(info_file.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            known = ", ".join(v.version for v in self.versions()) or "none"
            raise StoreError(f"bundle version {version!r} is not installed (installed: {known})") from exc
        except (OSError, ValueError) as exc:
            raise StoreError(f"{info_file} is unreadable ({exc})") from exc
        return InstalledBundle(name=str(info["name"]), version=str(info["version"]),
                               sha256=str(info["sha256"]), installed_at=float(info["installed_at"]),
                               source=str(info.get("source", "")), models=tuple(info.get("models", ())),
                               path=path)

    def versions(self) -> list[InstalledBundle]:
        """Installed versions, oldest install first."""
        if not self.root.is_dir():
            return []
        found = []
        for entry in self.root.iterdir():
            if entry.name.startswith(".") or entry.is_symlink() or not (entry / INFO_FILE).is_file():
                continue
            with contextlib.suppress(StoreError):
                found.append(self.get(entry.name))
        return sorted(found, key=lambda b: (b.installed_at, b.version))

    def history(self) -> list[dict[str, Any]]:
        path = self.root / HISTORY_FILE
        if not path.is_file():
            return []
        entries = []
        try:  # a damaged history must not stop installs or rollbacks: bad lines are skipped, named
            text = path.read_bytes().decode("utf-8", errors="replace")
        except OSError as exc:
            log.warning("%s cannot be read (%s), ignored", path, exc.strerror or exc)
            return []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    entry = json.loads(line)
                except ValueError:
                    entry = None
                if isinstance(entry, dict):
                    entries.append(entry)
                else:
                    log.warning("%s line %d is not a JSON object, ignored", path, number)
        return entries

    def previous_version(self) -> str | None:
        """The version that was active before the current one and is still installed (rollback target)."""
        current = self.active_version()
        installed = {b.version for b in self.versions()}
        for entry in reversed(self.history()):
            if entry.get("version") == current:
                previous = entry.get("previous")
                return previous if previous in installed and previous != current else None
        return None

    # -- changing (hold lock()) ---------------------------------------------------------------------------

    def add(self, bundle_file: Path, *, name: str, version: str, models: Sequence[str],
            source: str = "") -> InstalledBundle:
        """Copy a verified bundle file into `<version>/`, atomically. Same version + same bytes: no-op."""
        check_version(version)
        sha = file_sha256(bundle_file)
        target = self.root / version
        if target.exists():
            existing = self.get(version)
            if existing.sha256 != sha:
                raise StoreError(f"version {version} is already installed with different contents "
                                 f"(sha256 {existing.sha256[:12]}.. vs {sha[:12]}..); give the new bundle "
                                 "a new version")
            return existing
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        try:
            shutil.copyfile(bundle_file, staging / BUNDLE_FILE)
            if file_sha256(staging / BUNDLE_FILE) != sha:
                raise StoreError(f"{bundle_file} changed while it was being installed")
            info = {"name": name, "version": version, "sha256": sha, "installed_at": time.time(),
                    "source": source, "models": list(models)}
            _write_atomic(staging / INFO_FILE, json.dumps(info, indent=2) + "\n")
            _fsync_dir(staging)
            staging.chmod(0o755)
            staging.rename(target)
            _fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        log.info("stored bundle %s %s in %s", name, version, target)
        return self.get(version)

    def activate(self, version: str, action: str = "install") -> str | None:
        """Point `active` at `version` atomically (symlink + rename); record it in the history.
        Returns the previously active version."""
        installed = self.get(version)
        previous = self.active_version()
        self._point_active_at(installed.version)
        entry = {"ts": time.time(), "action": action, "version": version, "previous": previous}
        try:
            with (self.root / HISTORY_FILE).open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:  # disk full, file size limit: the activation is undone, not half done
            if previous is not None:
                self._point_active_at(previous)
            else:
                (self.root / ACTIVE_LINK).unlink(missing_ok=True)
                _fsync_dir(self.root)
            raise StoreError(f"{self.root / HISTORY_FILE}: cannot record the activation of {version} "
                             f"({exc.strerror or exc}); {previous or 'no bundle'} stays active") from exc
        log.info("bundle %s is now active (%s; was %s)", version, action, previous)
        return previous

    def _point_active_at(self, version: str) -> None:
        """Replace the `active` link atomically (symlink + rename) and make the change durable."""
        temp_link = self.root / f".{ACTIVE_LINK}.{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            temp_link.unlink()
        temp_link.symlink_to(version)
        temp_link.replace(self.root / ACTIVE_LINK)
        _fsync_dir(self.root)

    def remove(self, version: str) -> None:
        """Delete an installed version; never the active one."""
        installed = self.get(version)
        if installed.version == self.active_version():
            raise StoreError(f"version {version} is the active bundle and cannot be removed "
                             "(roll back or install another version first)")
        trash = self.root / f".removing-{version}-{os.getpid()}"
        installed.path.rename(trash)  # disappears from listings atomically, then is deleted
        shutil.rmtree(trash)
        log.info("removed bundle version %s", version)

    def prune(self, keep: int) -> list[str]:
        """Keep the `keep` most recently installed versions (never removing the active one or the rollback
        target); return the removed versions."""
        protected = {self.active_version(), self.previous_version()}
        candidates = [b.version for b in self.versions()]
        removed = []
        excess = len(candidates) - max(keep, 1)
        for version in candidates:
            if excess <= 0:
                break
            if version in protected:
                continue
            self.remove(version)
            removed.append(version)
            excess -= 1
        return removed


def _write_atomic(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    with temp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    temp.replace(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def active_bundle_file(state_dir: Path | str) -> Path | None:
    """The active installed bundle file (`<state_dir>/bundles/active/bundle.tar`), or None if none."""
    store = BundleStore(state_dir)
    version = store.active_version()
    return store.root / version / BUNDLE_FILE if version is not None else None


def load_active(state_dir: Path | str, trusted_keys: TrustedKeys | None,
                extract_to: Path | str | None = None) -> Bundle | None:
    """Read (and re-verify) the active installed bundle, or None when nothing is installed."""
    path = active_bundle_file(state_dir)
    if path is None:
        return None
    return read_bundle(path, trusted_keys=trusted_keys, extract_to=extract_to)
