"""VAE shapes (Conv1D and TCN), the beta-VAE loss, and the exportable scorer (scaling + scoring in one
module, ONNX parity)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.data.windows import RegimeScaler, StandardScaler
from trainer.run import scale_windows
from trainer.torch_model import (
    FLAT_EPS,
    MODEL_KINDS,
    ROOT_CAUSE_SPAN,
    ConvVAE,
    ExportableScorer,
    TcnVAE,
    VaeShape,
    beta_at,
    build_vae,
    kl_divergence,
    vae_loss,
)


@pytest.mark.parametrize(("length", "hidden"), [(50, (8, 16, 16)), (60, (8, 16)), (17, (4, 4, 4))])
def test_vae_reconstructs_the_input_shape(length: int, hidden: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    vae = ConvVAE(VaeShape(3, length, 5, hidden, 5)).eval()
    x = torch.randn(4, 3, length)
    recon, mu, logvar = vae(x)
    assert recon.shape == x.shape
    assert mu.shape == logvar.shape == (4, 5)
    # eval mode decodes the latent mean: deterministic
    torch.testing.assert_close(vae(x)[0], recon)


@pytest.mark.parametrize("length", [60, 50, 17, 4])
def test_tcn_vae_reconstructs_the_input_shape_at_any_length(length: int) -> None:
    torch.manual_seed(0)
    vae = build_vae(VaeShape(3, length, 4, (8,), 3, "tcn_vae", (1, 2, 4))).eval()
    assert isinstance(vae, TcnVAE)
    x = torch.randn(5, 3, length)
    recon, mu, logvar = vae(x)
    assert recon.shape == x.shape
    assert mu.shape == logvar.shape == (5, 4)
    torch.testing.assert_close(vae(x)[0], recon)
    # each window is encoded on its own: a batch of one gives the same latent
    torch.testing.assert_close(vae.encode(x[2:3])[0], mu[2:3])


def test_model_kinds_are_the_configs_and_bad_shapes_are_named() -> None:
    from trainer.config import MODEL_KINDS as CONFIG_KINDS

    assert tuple(MODEL_KINDS) == CONFIG_KINDS
    assert isinstance(build_vae(VaeShape(3, 16, 2, (4, 4), 3)), ConvVAE)
    with pytest.raises(ValueError, match="unknown model kind 'lstm_vae'"):
        build_vae(VaeShape(3, 16, 2, (4,), 3, "lstm_vae"))
    with pytest.raises(ValueError, match=r"tcn_vae takes one width in hidden, got \[4, 4\]"):
        build_vae(VaeShape(3, 16, 2, (4, 4), 3, "tcn_vae"))
    with pytest.raises(ValueError, match="tcn_vae needs an odd kernel_size"):
        build_vae(VaeShape(3, 16, 2, (4,), 4, "tcn_vae"))
    # shapes from before `kind` are Conv1D VAEs; a shape round-trips through its dict
    old = {"n_channels": 3, "length": 16, "latent_dim": 2, "hidden": [4, 4], "kernel_size": 3}
    assert VaeShape.from_dict(old) == VaeShape(3, 16, 2, (4, 4), 3)
    tcn = VaeShape(3, 16, 2, (8,), 5, "tcn_vae", (1, 3))
    assert VaeShape.from_dict(tcn.to_dict()) == tcn


def test_kl_is_zero_for_the_prior_and_loss_adds_beta_kl() -> None:
    mu, logvar = torch.zeros(2, 3), torch.zeros(2, 3)
    torch.testing.assert_close(kl_divergence(mu, logvar), torch.zeros(2))
    x, recon = torch.zeros(2, 1, 4), torch.ones(2, 1, 4)
    mu1 = torch.ones(2, 3)
    loss, rec, kl = vae_loss(x, recon, mu1, logvar, beta=0.5)
    assert rec.item() == pytest.approx(4.0)  # squared error summed over the window
    assert kl.item() == pytest.approx(1.5)  # 0.5 * sum(mu^2)
    assert loss.item() == pytest.approx(4.0 + 0.5 * 1.5)


def test_kl_warmup_rises_linearly_to_beta() -> None:
    assert [beta_at(e, 1.0, 4) for e in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert beta_at(0, 0.3, 0) == 0.3


def _regime_data(rng: np.random.Generator, n: int = 6, length: int = 16) -> tuple[np.ndarray, RegimeScaler]:
    centres = np.array([[0.0, 1.0], [10.0, 2.0]])
    regime = rng.integers(0, 2, (n, length))
    conditions = centres[regime] + rng.normal(0, 0.01, (n, length, 2))
    values = rng.normal(0, 1, (n, length, 3)) + 5 * regime[..., None]
    scaler = RegimeScaler.fit(values.reshape(-1, 3), conditions.reshape(-1, 2), 2, seed=0)
    windows = np.concatenate([values, conditions], axis=2).transpose(0, 2, 1).astype(np.float32)
    return windows, scaler


def test_in_graph_scaling_matches_numpy_scalers() -> None:
    rng = np.random.default_rng(0)
    windows, regime_scaler = _regime_data(rng)
    vae = ConvVAE(VaeShape(3, 16, 2, (4, 4), 3))
    scorer = ExportableScorer(vae, regime_scaler.to_dict())
    expected = scale_windows(regime_scaler, windows, 3)
    torch.testing.assert_close(
        scorer.standardise(torch.from_numpy(windows)), torch.from_numpy(expected), atol=1e-4, rtol=1e-4
    )
    plain = StandardScaler.fit(windows[:, :3].transpose(0, 2, 1).reshape(-1, 3))
    scorer = ExportableScorer(vae, plain.to_dict())
    torch.testing.assert_close(
        scorer.standardise(torch.from_numpy(windows[:, :3].copy())),
        torch.from_numpy(scale_windows(plain, windows[:, :3], 3)),
        atol=1e-4,
        rtol=1e-4,
    )


def _numpy_root_cause(scorer: ExportableScorer, windows: np.ndarray) -> np.ndarray:
    """Independent numpy twin of `channel_error` (model channels): peaks of moving averages of the residual
    over `ROOT_CAUSE_SPAN` steps, per-regime RMS scaling, the input's flatness, healthy centre/spread, max of
    the three, clipped."""
    vae = scorer.vae
    with torch.no_grad():
        z = scorer.standardise(torch.from_numpy(windows))
        residual = (vae.decode(vae.encode(z)[0]) - z).numpy().astype(np.float64)
    inputs = z.numpy().astype(np.float64)
    n, c, length = residual.shape
    reference = vae.regime_error_scale.numpy().astype(np.float64)
    if reference.shape[0] > 1:
        cond = windows[:, 3:].transpose(0, 2, 1) / scorer.condition_scale.numpy()
        regime = ((cond[:, :, None, :] - scorer.centroids.numpy()[None, None]) ** 2).sum(-1).argmin(-1)
        rms = np.sqrt(reference[regime]).transpose(0, 2, 1)  # [N, C, L]
    else:
        rms = np.sqrt(reference[0])[None, :, None]
    scaled = residual / rms
    span = ROOT_CAUSE_SPAN
    energy = np.stack([np.mean(scaled[:, :, t : t + span] ** 2, axis=2) for t in range(length - span + 1)], 2)
    bias = np.stack([np.mean(scaled[:, :, t : t + span], axis=2) ** 2 for t in range(length - span + 1)], 2)
    steps = np.diff(inputs, axis=2) ** 2
    quiet = np.stack([np.mean(steps[:, :, t : t + span - 1], axis=2) for t in range(length - span + 1)], 2)
    flatness = -np.log(quiet.min(axis=2) + FLAT_EPS)
    peaks = np.stack([energy.max(axis=2), bias.max(axis=2), flatness], axis=1)  # [N, 3, C]
    standard = (peaks - vae.peak_centre.numpy()) / vae.peak_spread.numpy()
    assert standard.shape == (n, 3, c)
    return np.maximum(standard.max(axis=1), 0.0)


def test_scorer_outputs_and_their_relations() -> None:
    rng = np.random.default_rng(1)
    windows, scaler = _regime_data(rng)
    torch.manual_seed(0)
    vae = ConvVAE(VaeShape(3, 16, 2, (4, 4), 3))
    with torch.no_grad():
        score, channel_error, latent, time_error = ExportableScorer(vae, scaler.to_dict())(
            torch.from_numpy(windows)
        )
    assert score.shape == (6,)
    assert channel_error.shape == (6, 5)
    assert latent.shape == (6, 2)
    assert time_error.shape == (6, 16)
    assert torch.all(channel_error[:, 3:] == 0)  # condition channels are inputs only
    assert torch.all(channel_error >= 0)
    torch.testing.assert_close(score, time_error.sum(dim=1) / (3 * 16))  # reconstruction score
    # the root-cause references change channel_error only (score and time_error are unchanged)
    vae.regime_error_scale = torch.tensor([[1.0, 2.0, 4.0], [0.5, 1.0, 3.0]])
    vae.peak_centre.copy_(torch.tensor([[0.5, 1.0, 0.2], [0.1, 0.3, 0.2], [2.0, 3.0, 1.0]]))
    vae.peak_spread.copy_(torch.tensor([[0.5, 2.0, 1.0], [0.2, 1.0, 0.5], [0.8, 1.0, 0.6]]))
    scorer = ExportableScorer(vae, scaler.to_dict())
    with torch.no_grad():
        score2, scaled_error, _, time_error2 = scorer(torch.from_numpy(windows))
    np.testing.assert_allclose(scaled_error[:, :3].numpy(), _numpy_root_cause(scorer, windows), rtol=1e-4,
                               atol=1e-5)
    assert not torch.allclose(scaled_error, channel_error)
    torch.testing.assert_close(score2, score)
    torch.testing.assert_close(time_error2, time_error)
    with pytest.raises(ValueError, match="unknown score"):
        ExportableScorer(vae, scaler.to_dict(), "bogus")


def test_root_cause_reference_standardises_healthy_peaks_and_round_trips() -> None:
    rng = np.random.default_rng(3)
    windows, scaler = _regime_data(rng, n=40)
    torch.manual_seed(0)
    vae = ConvVAE(VaeShape(3, 16, 2, (4, 4), 3))
    scorer = ExportableScorer(vae, scaler.to_dict())
    with torch.no_grad():
        before = scorer(torch.from_numpy(windows))
    scorer.fit_root_cause_reference(windows, batch_size=16)
    assert vae.regime_error_scale.shape == (2, 3)  # one row per regime
    with torch.no_grad():
        z = scorer.standardise(torch.from_numpy(windows))
        residual = (vae.decode(vae.encode(z)[0]) - z).numpy()
        after = scorer(torch.from_numpy(windows))
    np.testing.assert_allclose(vae.channel_error_scale.numpy(), (residual**2).mean(axis=(0, 2)), rtol=1e-5)
    # on the reference windows themselves the standardised peaks have mean 0 and std 1 per channel
    with torch.no_grad():
        regime = scorer._standardise(torch.from_numpy(windows))[1]
        peaks = scorer.peak_statistics(torch.from_numpy(residual), regime, z)
    standard = ((peaks - vae.peak_centre) / vae.peak_spread).numpy()
    np.testing.assert_allclose(standard.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(standard.std(axis=0), 1.0, rtol=1e-4)
    np.testing.assert_allclose(after[1][:, :3].numpy(), _numpy_root_cause(scorer, windows), rtol=1e-4,
                               atol=1e-5)
    for i in (0, 2, 3):  # score, latent mean, time error: unchanged by the references
        torch.testing.assert_close(after[i], before[i])
    # the per-regime shape survives a state-dict round trip into a fresh VAE (built with one row)
    fresh = ConvVAE(VaeShape(3, 16, 2, (4, 4), 3))
    fresh.load_state_dict(vae.state_dict())
    torch.testing.assert_close(fresh.regime_error_scale, vae.regime_error_scale)
    with torch.no_grad():
        torch.testing.assert_close(ExportableScorer(fresh, scaler.to_dict())(torch.from_numpy(windows))[1],
                                   after[1])
    # a state dict from before the peak statistics (channel_error_scale only) still loads
    old = {k: v for k, v in vae.state_dict().items()
           if k not in ("regime_error_scale", "peak_centre", "peak_spread")}
    legacy = ConvVAE(VaeShape(3, 16, 2, (4, 4), 3))
    legacy.load_state_dict(old)
    torch.testing.assert_close(legacy.regime_error_scale, vae.channel_error_scale.view(1, -1))
    torch.testing.assert_close(legacy.peak_spread, torch.ones(3, 3))
    assert torch.all(legacy.peak_centre[2] > 1e8)  # no flatness reference: flatness can never win
    # a state dict from before the flatness statistic (two reference rows) loads, and its channel_error is
    # what it was: energy and bias only
    two_rows = dict(vae.state_dict())
    two_rows["peak_centre"] = vae.peak_centre[:2].clone()
    two_rows["peak_spread"] = vae.peak_spread[:2].clone()
    older = ConvVAE(VaeShape(3, 16, 2, (4, 4), 3))
    older.load_state_dict(two_rows)
    torch.testing.assert_close(older.peak_centre[:2], vae.peak_centre[:2])
    with torch.no_grad():
        older_scorer = ExportableScorer(older, scaler.to_dict())
        z_in = older_scorer.model_inputs(torch.from_numpy(windows))
        res = older.decode(older.encode(z_in)[0]) - z_in
        regimes = older_scorer._standardise(torch.from_numpy(windows))[1]
        peaks2 = older_scorer.peak_statistics(res, regimes, z_in)
        want = torch.relu(((peaks2[:, :2] - vae.peak_centre[:2]) / vae.peak_spread[:2]).amax(dim=1))
        torch.testing.assert_close(older_scorer(torch.from_numpy(windows))[1][:, :3], want)
    with pytest.raises(ValueError, match="no healthy windows"):
        scorer.fit_root_cause_reference(windows[:0])
    plain = StandardScaler.fit(windows[:, :3].transpose(0, 2, 1).reshape(-1, 3))
    with pytest.raises(ValueError, match="root-cause reference has 2 regimes, the scaler 1"):
        ExportableScorer(vae, plain.to_dict())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy exporter is the one export uses
@pytest.mark.parametrize("shape", [VaeShape(3, 16, 2, (4, 4), 3),
                                   VaeShape(3, 16, 2, (6,), 3, "tcn_vae", (1, 2))],
                         ids=["conv_vae", "tcn_vae"])
def test_onnx_export_matches_torch(tmp_path: Path, shape: VaeShape) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(2)
    windows, scaler = _regime_data(rng)
    torch.manual_seed(0)
    vae = build_vae(shape)
    latent_stats = {"mean": [0.1, -0.1], "precision": [[2.0, 0.1], [0.1, 1.0]]}
    scorer = ExportableScorer(vae, scaler.to_dict(), "latent", latent_stats).eval()
    scorer.fit_root_cause_reference(windows[:3])  # per-regime references: the in-graph gather is exported
    assert vae.regime_error_scale.shape == (2, 3)
    path = tmp_path / "scorer.onnx"
    torch.onnx.export(
        scorer,
        (torch.from_numpy(windows),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["window"],
        output_names=["score", "channel_error", "latent_mean", "time_error"],
        dynamic_axes={
            "window": {0: "batch"},
            "score": {0: "batch"},
            "channel_error": {0: "batch"},
            "latent_mean": {0: "batch"},
            "time_error": {0: "batch"},
        },
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"window": windows[:4]})
    with torch.no_grad():
        want = scorer(torch.from_numpy(windows[:4]))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-4, atol=1e-5)


def _detrend_scorer(
    rng: np.random.Generator, detrend: list[bool], regime: bool = False
) -> tuple[ExportableScorer, np.ndarray]:
    """A small scorer whose first model channel is centred per window, and raw windows for it."""
    if regime:
        windows, scaler = _regime_data(rng)
        scaler_dict = scaler.to_dict()
    else:
        levels = np.array([20.0, -3.0, 0.5])[None, :, None]
        windows = (rng.normal(0, 1, (6, 3, 16)) + levels).astype(np.float32)
        scaler_dict = StandardScaler.fit(windows.transpose(0, 2, 1).reshape(-1, 3)).to_dict()
    torch.manual_seed(0)
    vae = ConvVAE(VaeShape(3, 16, 2, (4, 4), 3))
    scorer = ExportableScorer(vae, scaler_dict, "elbo", detrend=detrend).eval()
    scorer.fit_root_cause_reference(windows)
    return scorer, windows


@pytest.mark.parametrize("regime", [False, True])
def test_detrend_mask_centres_the_marked_channels_only(regime: bool) -> None:
    rng = np.random.default_rng(4)
    scorer, windows = _detrend_scorer(rng, [True, False, False], regime)
    x = torch.from_numpy(windows)
    with torch.no_grad():
        inputs = scorer.model_inputs(x)
        scaled = scorer.standardise(x)
        before = scorer(x)
        # a constant added to the centred channel changes no output; added to another channel it does
        shifted = x.clone()
        shifted[:, 0] += 7.5
        same = scorer(shifted)
        other = x.clone()
        other[:, 1] += 7.5
        changed = scorer(other)
    torch.testing.assert_close(inputs[:, 0].mean(dim=1), torch.zeros(len(windows)), atol=1e-5, rtol=0)
    torch.testing.assert_close(inputs[:, 0], scaled[:, 0] - scaled[:, 0].mean(dim=1, keepdim=True))
    assert torch.equal(inputs[:, 1:], scaled[:, 1:])  # unmarked channels exactly as scaled
    assert torch.all((changed[0] - before[0]).abs() > 1e-3)
    if regime:
        return  # per-regime scaling turns a raw constant into a step wherever the regime changes
    for got, want in zip(same, before, strict=True):
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_detrend_mask_off_is_todays_scorer_and_a_bad_mask_is_named() -> None:
    rng = np.random.default_rng(5)
    windows, scaler = _regime_data(rng)
    torch.manual_seed(0)
    vae = ConvVAE(VaeShape(3, 16, 2, (4, 4), 3))
    x = torch.from_numpy(windows)
    with torch.no_grad():
        plain = ExportableScorer(vae, scaler.to_dict())(x)
        for mask in (None, [], [False, False, False]):
            scorer = ExportableScorer(vae, scaler.to_dict(), detrend=mask)
            assert not scorer.centred
            for got, want in zip(scorer(x), plain, strict=True):
                assert torch.equal(got, want)
    with pytest.raises(ValueError, match="detrend mask has 5 flags, the VAE 3 channels"):
        ExportableScorer(vae, scaler.to_dict(), detrend=[True] * 5)


def test_root_cause_reference_is_fitted_on_the_centred_inputs() -> None:
    rng = np.random.default_rng(6)
    scorer, windows = _detrend_scorer(rng, [True, False, True])
    vae = scorer.vae
    with torch.no_grad():
        z = scorer.model_inputs(torch.from_numpy(windows))
        residual = (vae.decode(vae.encode(z)[0]) - z).numpy()
        peaks = scorer.peak_statistics(torch.from_numpy(residual), None, z)
    np.testing.assert_allclose(vae.channel_error_scale.numpy(), (residual**2).mean(axis=(0, 2)), rtol=1e-5)
    standard = ((peaks - vae.peak_centre) / vae.peak_spread).numpy()
    np.testing.assert_allclose(standard.mean(axis=0), 0.0, atol=1e-4)  # healthy peaks standardised
    with torch.no_grad():
        ones = scorer(torch.from_numpy(windows))[1]
    assert ones.shape == (len(windows), 3)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy exporter is the one export uses
@pytest.mark.parametrize("regime", [False, True])
def test_onnx_export_of_a_detrend_mask_matches_torch(tmp_path: Path, regime: bool) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from export.onnx_graph import export_onnx, run_ort, run_torch, session

    rng = np.random.default_rng(7)
    scorer, windows = _detrend_scorer(rng, [True, False, True], regime)
    path = tmp_path / "scorer.onnx"
    export_onnx(scorer, path, windows)
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert "ReduceMean" in ops
    got = run_ort(session(path), windows)
    want = run_torch(scorer, windows)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=name)
    # in the graph too: a level shift of a centred channel leaves the score alone (one scaler for every time
    # step), of another it does not
    if not regime:
        shifted = windows.copy()
        shifted[:, 0] += 7.5
        np.testing.assert_allclose(run_ort(session(path), shifted)["score"], got["score"], rtol=1e-4,
                                   atol=1e-5)
    other = windows.copy()
    other[:, 1] += 7.5
    assert np.all(np.abs(run_ort(session(path), other)["score"] - got["score"]) > 1e-3)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy exporter is the one export uses
def test_a_frozen_channel_is_the_root_cause_through_its_flatness_and_the_onnx_graph_agrees(
        tmp_path: Path) -> None:
    """A reading frozen for the last 8 steps leaves a residual no larger than a healthy one's; the flatness
    statistic names it, in torch and in the exported graph."""
    rng = np.random.default_rng(9)
    levels = np.array([20.0, -3.0, 0.5, 7.0])[None, :, None]
    healthy = (rng.normal(0, 1, (400, 4, 16)) + levels).astype(np.float32)
    scaler = StandardScaler.fit(healthy.transpose(0, 2, 1).reshape(-1, 4)).to_dict()
    torch.manual_seed(0)
    scorer = ExportableScorer(ConvVAE(VaeShape(4, 16, 2, (4, 4), 3)), scaler).eval()
    scorer.fit_root_cause_reference(healthy)
    faulty = (rng.normal(0, 1, (50, 4, 16)) + levels).astype(np.float32)
    channels = np.arange(50) % 4
    for i, channel in enumerate(channels):
        faulty[i, channel, 8:] = faulty[i, channel, 8]
    with torch.no_grad():
        error = scorer(torch.from_numpy(faulty))[1].numpy()
    assert np.mean(error.argmax(axis=1) == channels) >= 0.95
    onnxruntime = pytest.importorskip("onnxruntime")
    path = tmp_path / "scorer.onnx"
    torch.onnx.export(scorer, (torch.from_numpy(faulty),), str(path), dynamo=False, opset_version=17,
                      input_names=["window"],
                      output_names=["score", "channel_error", "latent_mean", "time_error"],
                      dynamic_axes={"window": {0: "batch"}})
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_error = session.run(["channel_error"], {"window": faulty})[0]
    np.testing.assert_allclose(onnx_error, error, rtol=1e-4, atol=1e-4)
