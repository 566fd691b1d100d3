"""The installed-bundle store: versions, atomic activation, history/rollback target, remove, prune, lock."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from edge_agent.bundle.store import BundleStore, StoreError


def _file(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / f"in-{len(list(tmp_path.iterdir()))}.bundle"
    path.write_bytes(content)
    return path


def _install(store: BundleStore, tmp_path: Path, version: str, content: bytes | None = None) -> None:
    with store.lock():
        store.add(_file(tmp_path, content or version.encode()), name="pumps", version=version,
                  models=("pump",))
        store.activate(version)


def test_add_and_activate_points_the_link_and_records_history(tmp_path: Path, state_dir: Path) -> None:
    store = BundleStore(state_dir)
    assert store.active() is None
    _install(store, tmp_path, "1.0.0")
    _install(store, tmp_path, "1.1.0")
    assert store.active_version() == "1.1.0"
    assert (state_dir / "bundles" / "active").readlink() == Path("1.1.0")
    assert (state_dir / "bundles" / "active" / "bundle.tar").read_bytes() == b"1.1.0"
    assert [b.version for b in store.versions()] == ["1.0.0", "1.1.0"]
    assert store.previous_version() == "1.0.0"
    assert [(e["version"], e["previous"]) for e in store.history()] == [("1.0.0", None), ("1.1.0", "1.0.0")]
    assert not [p for p in (state_dir / "bundles").iterdir() if p.name.startswith((".staging", ".active."))]


def test_same_version_same_bytes_is_a_no_op_other_bytes_refused(tmp_path: Path, state_dir: Path) -> None:
    store = BundleStore(state_dir)
    _install(store, tmp_path, "1.0.0", b"abc")
    with store.lock():
        again = store.add(_file(tmp_path, b"abc"), name="pumps", version="1.0.0", models=())
        assert again.sha256 == store.get("1.0.0").sha256
        with pytest.raises(StoreError, match="already installed with different contents"):
            store.add(_file(tmp_path, b"xyz"), name="pumps", version="1.0.0", models=())
    assert store.get("1.0.0").bundle_file.read_bytes() == b"abc"


@pytest.mark.parametrize("version", ["../x", "a/b", "active", ".hidden", ""])
def test_unsafe_versions_are_refused(tmp_path: Path, state_dir: Path, version: str) -> None:
    store = BundleStore(state_dir)
    with store.lock(), pytest.raises(StoreError, match="cannot be stored"):
        store.add(_file(tmp_path, b"x"), name="pumps", version=version, models=())


def test_remove_never_the_active_one(tmp_path: Path, state_dir: Path) -> None:
    store = BundleStore(state_dir)
    _install(store, tmp_path, "1.0.0")
    _install(store, tmp_path, "2.0.0")
    with store.lock():
        with pytest.raises(StoreError, match=r"2\.0\.0 is the active bundle and cannot be removed"):
            store.remove("2.0.0")
        store.remove("1.0.0")
        with pytest.raises(StoreError, match=r"'1.0.0' is not installed \(installed: 2.0.0\)"):
            store.remove("1.0.0")
    assert store.previous_version() is None
    assert store.active_version() == "2.0.0"


def test_prune_keeps_newest_active_and_rollback_target(tmp_path: Path, state_dir: Path) -> None:
    store = BundleStore(state_dir)
    for version in ("1", "2", "3", "4"):
        _install(store, tmp_path, version)
    with store.lock():
        store.activate("2", action="rollback")  # active 2, previous 4
        removed = store.prune(keep=2)
    assert removed == ["1", "3"]
    assert {b.version for b in store.versions()} == {"2", "4"}


def _hold_lock(state_dir: str, started: multiprocessing.synchronize.Event,
               release: multiprocessing.synchronize.Event) -> None:
    with BundleStore(state_dir).lock():
        started.set()
        release.wait(10)


def test_lock_is_exclusive_across_processes(state_dir: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    started, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(state_dir), started, release))
    holder.start()
    try:
        assert started.wait(10)
        with pytest.raises(StoreError, match=rf"another bundle operation \(pid {holder.pid}\)"), \
                BundleStore(state_dir).lock(wait=False):
            pass
    finally:
        release.set()
        holder.join(10)
    with BundleStore(state_dir).lock(wait=False):
        pass
