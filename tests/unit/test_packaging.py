"""The gateway install must never pull torch: walk the installed dependency graph of the base install."""

from __future__ import annotations

import re
from importlib import metadata

from packaging.requirements import Requirement


def _base_closure(dist_name: str) -> set[str]:
    seen: set[str] = set()
    stack = [dist_name]
    while stack:
        name = re.sub(r"[-_.]+", "-", stack.pop()).lower()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for spec in requires:
            req = Requirement(spec)
            # Only requirements active without extras, on this interpreter.
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            stack.append(req.name)
    return seen


def test_base_install_does_not_depend_on_torch() -> None:
    closure = _base_closure("edge-agent")
    assert "onnxruntime" in closure
    assert "paho-mqtt" in closure
    assert not {"torch", "scipy", "scikit-learn", "matplotlib"} & closure


def test_trainer_extra_pins_torch() -> None:
    requires = [Requirement(r) for r in metadata.requires("edge-agent") or []]
    torch = [r for r in requires if r.name == "torch"]
    assert torch, "the trainer extra must list torch"
    assert all(str(r.specifier) == "==2.13.0" for r in torch)
    assert all(r.marker is not None and r.marker.evaluate({"extra": "trainer"}) for r in torch)
