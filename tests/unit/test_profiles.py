"""Device profiles: the shipped ones load, and bad files are refused with the key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.configtools import ConfigError
from edge_agent.profiles import BUILTIN_PROFILE_DIR, available_profiles, describe, load_profile

SHIPPED = ("x86-64-ipc", "jetson-orin", "arm64-rpi")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profiles_load_and_end_with_cpu(name: str) -> None:
    profile = load_profile(name)
    assert profile.name == name
    assert profile.providers[-1].name == "CPUExecutionProvider"
    assert "fp32" in profile.preferred_precision
    assert profile.source == BUILTIN_PROFILE_DIR / f"{name}.toml"


def test_shipped_profiles_match_the_issue() -> None:
    jetson = load_profile("jetson-orin")
    assert jetson.provider_names == (
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    assert jetson.providers[0].options["trt_fp16_enable"] is True
    rpi = load_profile("arm64-rpi")
    assert (rpi.intra_op_threads, rpi.preferred_precision[0]) == (4, "int8")
    ipc = load_profile("x86-64-ipc")
    assert ipc.providers[0].name == "OpenVINOExecutionProvider"
    assert not ipc.providers[0].required
    assert set(SHIPPED) <= set(available_profiles())


def test_missing_required_providers() -> None:
    jetson = load_profile("jetson-orin")
    assert jetson.missing_required_providers(["CPUExecutionProvider"]) == ["CUDAExecutionProvider"]
    assert load_profile("x86-64-ipc").missing_required_providers(["CPUExecutionProvider"]) == []


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "box.toml"
    path.write_text(text)
    return path


def test_load_by_path_and_by_search_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, 'description = "test box"\n[threads]\nintra_op = 3\n')
    profile = load_profile(path)
    assert (profile.name, profile.intra_op_threads, profile.provider_names) == (
        "box", 3, ("CPUExecutionProvider",))
    monkeypatch.setenv("EDGE_AGENT_PROFILE_PATH", str(tmp_path))
    assert load_profile("box").source == path


@pytest.mark.parametrize(("text", "expected"), [
    ("colour = 1\n", "colour: unknown key"),
    ("[threads]\nintra_op = 0\n", "threads -> intra_op: must be at least 1"),
    ("[threads]\nintra = 2\n", "threads -> intra: unknown key"),
    ('[threads]\nspin = "yes"\n', "threads -> spin: expected"),
    ("[threads]\nparallel_runs = 0\n", "threads -> parallel_runs: must be at least 1"),
    ('preferred_precision = ["fp64"]\n', "preferred_precision -> 0: must be one of fp32, fp16, int8"),
    ('[[providers]]\nname = "CUDAExecutionProvider"\n',
     "providers -> 0: the last provider must be CPUExecutionProvider"),
    ('[[providers]]\nname = "CPU"\n', "providers -> 0 -> name: must be an onnxruntime provider name"),
    ('[[providers]]\nname = "CPUExecutionProvider"\noptions = { x = [1] }\n',
     "providers -> 0 -> options -> x: provider options are strings, numbers or booleans"),
    ("[camera]\nfps = 0\n", "camera -> fps: must be greater than 0"),
    ('[audio]\nsample_rate = "16k"\n', "audio -> sample_rate: expected an integer"),
    ("memory_budget_mb = \n", "not valid TOML"),
])
def test_bad_profiles_name_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    assert expected in str(info.value)
    assert str(path) in str(info.value)


def test_unknown_name_lists_known_profiles() -> None:
    with pytest.raises(ConfigError, match=r"no profile named 'nope' \(known: .*arm64-rpi"):
        load_profile("nope")
    with pytest.raises(ConfigError, match="lowercase"):
        load_profile("Bad Name")


def test_provider_settings_keeps_order_and_falls_back_to_cpu() -> None:
    pytest.importorskip("edge_agent.inference", reason="A2's inference module not written yet")
    jetson = load_profile("jetson-orin")
    full = jetson.provider_settings()
    assert [name for name, _ in full.providers] == list(jetson.provider_names)
    assert full.providers[0][1]["trt_fp16_enable"] is True
    assert (full.intra_op_threads, full.inter_op_threads) == (2, 1)
    here = jetson.provider_settings(available=["CPUExecutionProvider"])
    assert here.providers == (("CPUExecutionProvider", {}),)


def test_worker_threads_do_not_spin_unless_the_profile_says_so(tmp_path: Path) -> None:
    """ORT's intra/inter-op threads busy-wait between runs by default; the agent's sessions turn that off
    unless a profile sets `[threads] spin = true`."""
    from edge_agent.inference import ProviderSettings, session_options

    def spin_entries(settings: ProviderSettings) -> tuple[str, str]:
        options = session_options(settings)
        return (options.get_session_config_entry("session.intra_op.allow_spinning"),
                options.get_session_config_entry("session.inter_op.allow_spinning"))

    ipc = load_profile("x86-64-ipc")
    assert ipc.spin_threads is False
    assert spin_entries(ipc.provider_settings()) == ("0", "0")
    two = load_profile(_write(tmp_path, "[threads]\nintra_op = 2\n"))
    assert session_options(two.provider_settings()).intra_op_num_threads == 2
    assert spin_entries(two.provider_settings()) == ("0", "0")
    spinning = load_profile(_write(tmp_path, "[threads]\nintra_op = 2\nspin = true\n"))
    assert spinning.provider_settings().allow_spinning is True
    assert spin_entries(spinning.provider_settings()) == ("1", "1")


def test_parallel_runs_default_to_one_and_reach_the_provider_settings(tmp_path: Path) -> None:
    assert load_profile(_write(tmp_path, "[threads]\nintra_op = 1\n")).provider_settings().parallel_runs == 1
    ipc = load_profile("x86-64-ipc")  # one thread per run, a burst split over two runs
    assert (ipc.intra_op_threads, ipc.parallel_runs) == (1, 2)
    assert ipc.provider_settings().parallel_runs == 2
    assert "2 parallel runs" in describe(ipc)[2]


def test_only_loadable_names_are_listed_as_available(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file whose stem is no profile name (`Plant_IPC.toml`) can be loaded by its path only: listing it as
    known would offer a name that is then refused."""
    source = next(iter(available_profiles().values()))
    (tmp_path / "Plant_IPC.toml").write_text(source.read_text())
    (tmp_path / "plant-ipc.toml").write_text(source.read_text())
    monkeypatch.setenv("EDGE_AGENT_PROFILE_PATH", str(tmp_path))
    known = available_profiles()
    assert "plant-ipc" in known
    assert "Plant_IPC" not in known
