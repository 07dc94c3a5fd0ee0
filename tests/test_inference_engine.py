"""Inference engine: logits equal plain MONAI sliding-window inference for every architecture; progress,
cancel, determinism, cache.

The reference is MONAI's own ``sliding_window_inference`` run directly on an input we normalise with
numpy (not with our preprocessing), so a mistake in orientation, normalisation, padding, batching or
mapping back shows up as a difference.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from monai.data.utils import dense_patch_slices
from monai.inferers import sliding_window_inference
from monai.inferers.utils import _get_scan_interval

from napari_vit3d.errors import Cancelled, ModelError
from napari_vit3d.inference import count_windows, forward_cache, segment
from napari_vit3d.io.volume import Volume
from napari_vit3d.models.registry import build_network
from napari_vit3d.models.spec import ModelSpec

LABELS = [{"index": 0, "name": "background"}, {"index": 1, "name": "a"}, {"index": 2, "name": "b"}]

TINY = {
    "unetr": dict(arch_kwargs=dict(feature_size=4, hidden_size=32, mlp_dim=64, num_heads=2, img_size=[32, 32, 32]),
                  roi_size=(32, 32, 32)),
    # batch norm (eval: running statistics): instance norm would need > 1 voxel at the 1/32 bottleneck
    "swin_unetr": dict(arch_kwargs=dict(feature_size=12, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                                        norm_name="batch"), roi_size=(32, 32, 32)),
    "segformer3d": dict(arch_kwargs=dict(embed_dims=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4],
                                         decoder_dim=16), roi_size=(32, 32, 32)),
    "vit_seg": dict(arch_kwargs=dict(patch_size=8, hidden_size=32, mlp_dim=64, num_layers=2, num_heads=2,
                                     feature_size=4, img_size=[32, 32, 32]), roi_size=(32, 32, 32)),
}


def tiny_model(arch: str, *, spacing=(1.0, 1.0, 1.0), seed: int = 0):
    spec = ModelSpec(name=f"tiny-{arch}", architecture=arch, labels=LABELS, spacing=spacing,
                     normalization={"kind": "zscore_nonzero"}, **TINY[arch])
    torch.manual_seed(seed)
    net = build_network(spec).eval()
    return SimpleNamespace(network=net, spec=spec, weights_sha256=None)


def scan(shape=(40, 38, 34), seed=1, affine=None) -> Volume:
    rng = np.random.default_rng(seed)
    data = rng.normal(100, 20, shape).astype(np.float32)
    data[:4] = 0  # some background, so the non-zero z-score differs from a plain one
    return Volume(data, np.eye(4) if affine is None else affine, name="scan")


def numpy_zscore_nonzero(x: np.ndarray) -> np.ndarray:
    m = x != 0
    out = x.astype(np.float64).copy()
    out[m] = (x[m] - x[m].mean()) / x[m].std()
    return out.astype(np.float32)


@pytest.mark.parametrize("arch", sorted(TINY))
def test_logits_equal_plain_monai(arch):
    """Our scan-grid logits == MONAI sliding_window_inference on the (numpy-normalised) scan, ≤ 1e-5."""
    model = tiny_model(arch)
    # an LPS scan (x and y flipped) with 1 mm voxels: our engine reorients to RAS exactly
    aff = np.diag([-1.0, -1.0, 1.0, 1.0])
    aff[:3, 3] = [20, 30, -10]
    roi = TINY[arch]["roi_size"]
    vol = scan(shape=tuple(r + d for r, d in zip(roi, (8, 3, 0))), affine=aff)
    res = segment(vol, model, device="cpu", overlap=0.25, sw_batch_size=2, use_cache=False)
    ras = np.flip(vol.data, (0, 1))
    x = torch.from_numpy(np.ascontiguousarray(numpy_zscore_nonzero(ras)))[None, None]
    with torch.no_grad():
        ref = sliding_window_inference(x, roi, 1, model.network, overlap=0.25, mode="gaussian")[0]
    ref_scan = np.flip(ref.numpy(), (1, 2))  # back to the file's (LPS) voxel order
    from napari_vit3d.inference import logits_to_scan

    ours = logits_to_scan(res.logits, res.model_input)
    assert ours.shape == vol.data.shape + (3,)
    assert np.abs(np.moveaxis(ours, -1, 0) - ref_scan).max() <= 1e-5
    # labels are the argmax of those logits, on the scan's grid with the scan's affine
    np.testing.assert_array_equal(res.labels.data, np.argmax(ref_scan, axis=0))
    np.testing.assert_array_equal(res.labels.affine, vol.affine)
    probs = res.probabilities.data
    assert probs.dtype == np.float32 and probs.shape == vol.data.shape + (3,)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs, torch.softmax(torch.from_numpy(np.moveaxis(ref_scan, 0, -1).copy()), -1).numpy(),
                               atol=1e-5)


def test_window_count_matches_monai_and_progress_increases():
    model = tiny_model("segformer3d")
    vol = scan(shape=(70, 41, 33))
    calls = []
    segment(vol, model, device="cpu", overlap=0.5, sw_batch_size=3, use_cache=False,
            progress=lambda d, t: calls.append((d, t)))
    interval = _get_scan_interval((70, 41, 33), (32, 32, 32), 3, (0.5,) * 3)
    n_monai = len(dense_patch_slices((70, 41, 33), (32, 32, 32), interval))
    assert count_windows((70, 41, 33), (32, 32, 32), 0.5) == n_monai
    done = [d for d, _ in calls]
    assert all(t == n_monai for _, t in calls)
    assert done == sorted(done) and len(set(done)) == len(done)
    assert done[-1] == n_monai
    assert len(calls) == -(-n_monai // 3)  # one call per window batch


def test_cancel_mid_run_raises_and_leaves_nothing():
    model = tiny_model("segformer3d")
    vol = scan(shape=(70, 41, 33))
    forward_cache().clear()
    calls = []

    def cancel():
        return len(calls) >= 2

    out = None
    with pytest.raises(Cancelled):
        out = segment(vol, model, device="cpu", overlap=0.5, progress=lambda d, t: calls.append(d), cancel=cancel)
    assert out is None
    assert len(calls) == 2  # stopped before the third batch
    assert len(forward_cache()) == 0  # no partial result cached
    # a later run without cancel works and is complete
    res = segment(vol, model, device="cpu", overlap=0.5)
    assert res.labels.data.shape == vol.data.shape


def test_cpu_runs_are_bit_identical():
    model = tiny_model("unetr")
    vol = scan(shape=(36, 36, 32))
    a = segment(vol, model, device="cpu", use_cache=False)
    b = segment(vol, model, device="cpu", use_cache=False)
    assert torch.equal(a.logits, b.logits)
    np.testing.assert_array_equal(a.probabilities.data, b.probabilities.data)
    np.testing.assert_array_equal(a.labels.data, b.labels.data)


def test_cache_reuses_forward_pass_until_weights_or_settings_change():
    model = tiny_model("segformer3d")
    vol = scan(shape=(36, 36, 32))
    forward_cache().clear()
    first = segment(vol, model, device="cpu")
    again = segment(vol, model, device="cpu")
    assert not first.from_cache and again.from_cache
    assert torch.equal(first.logits, again.logits)
    other = segment(vol, model, device="cpu", overlap=0.5)
    assert not other.from_cache
    with torch.no_grad():
        model.network.classifier.bias += 1.0  # fine-tuned in place: must not reuse the old pass
    changed = segment(vol, model, device="cpu")
    assert not changed.from_cache
    assert not torch.equal(changed.logits, first.logits)
    edited = vol.with_data(vol.data + 1)
    assert not segment(edited, model, device="cpu").from_cache


def test_provenance_and_bad_settings():
    model = tiny_model("segformer3d")
    vol = scan(shape=(34, 33, 32))
    res = segment(vol, model, device="cpu", overlap=0.3, return_probabilities=False)
    assert res.probabilities is None
    meta = res.labels.metadata["vit3d"]
    assert meta["model"] == "tiny-segformer3d" and meta["settings"]["overlap"] == 0.3
    assert meta["network_fingerprint"] and res.labels.metadata["kind"] == "labels"
    with pytest.raises(ModelError, match="overlap"):
        segment(vol, model, overlap=1.0)
    with pytest.raises(ModelError, match="multiple of 32"):
        segment(vol, model, roi_size=(48, 40, 32))
    with pytest.raises(ModelError, match="device"):
        segment(vol, model, device="tpu")


def test_cuda_out_of_memory_halves_the_batch_then_falls_back_to_cpu():
    """The retry policy, driven by a fake pass that runs out of GPU memory above a given batch size."""
    from napari_vit3d.errors import ResourceLimitError
    from napari_vit3d.inference.predictor import DeviceFallbackWarning, run_with_memory_fallback

    seen = []

    def attempt(dev, bs, amp):
        seen.append((dev.type, bs, amp))
        if dev.type == "cuda":
            raise torch.OutOfMemoryError("CUDA out of memory")
        return torch.zeros(1)

    with pytest.warns(DeviceFallbackWarning, match="CPU"):
        run_with_memory_fallback(attempt, torch.device("cuda"), 8, torch.bfloat16)
    assert seen == [("cuda", 8, torch.bfloat16), ("cuda", 4, torch.bfloat16), ("cuda", 2, torch.bfloat16),
                    ("cuda", 1, torch.bfloat16), ("cpu", 1, None)]
    seen.clear()

    def fits_at_two(dev, bs, amp):
        seen.append(bs)
        if bs > 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return torch.ones(1)

    with pytest.warns(DeviceFallbackWarning, match="retrying with 2"):
        assert run_with_memory_fallback(fits_at_two, torch.device("cuda"), 5, None).item() == 1
    assert seen == [5, 2]

    def cpu_full(dev, bs, amp):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    with pytest.raises(ResourceLimitError, match="not enough memory"):
        run_with_memory_fallback(cpu_full, torch.device("cpu"), 1, None)


def test_model_given_by_spec_path(tmp_path):
    """segment() loads a spec .json through the registry (here the registry's pass-through architecture)."""
    spec = ModelSpec(name="identity-path", architecture="identity", roi_size=(16, 16, 16), spacing=(1, 1, 1),
                     normalization={"kind": "none"}, labels=LABELS)
    path = tmp_path / "identity.json"
    spec.to_json(path)
    mask = np.zeros((20, 18, 17), np.float32)
    mask[4:12, 3:9, 5:10] = 1
    mask[14:18, 10:16, 2:6] = 2
    with pytest.warns(UserWarning, match="random initialisation"):
        res = segment(Volume(mask, np.diag([-1.0, 1.0, 1.0, 1.0])), str(path), device="cpu", use_cache=False)
    np.testing.assert_array_equal(res.labels.data, mask.astype(np.uint8))
    assert res.metadata["model"] == "identity-path"


def test_cache_tells_apart_parameter_free_networks_of_different_configuration():
    """Two pass-through models with 2 and 3 classes have no weights to hash; the cache must not mix them."""
    from napari_vit3d.models.registry import IdentityNet
    from napari_vit3d.models.spec import LabelInfo

    mask = np.zeros((20, 18, 17), np.float32)
    mask[4:12, 3:9, 5:10] = 1
    mask[14:18, 10:16, 2:6] = 2
    vol = Volume(mask, np.eye(4))
    forward_cache().clear()
    results = []
    for n in (2, 3):
        spec = ModelSpec(name="identity", architecture="identity", roi_size=(16, 16, 16), spacing=(1, 1, 1),
                         normalization={"kind": "none"}, labels=[LabelInfo(i, f"c{i}") for i in range(n)])
        model = SimpleNamespace(network=IdentityNet(out_channels=n), spec=spec, weights_sha256=None)
        results.append(segment(vol, model, device="cpu"))
    assert not results[1].from_cache
    assert results[0].probabilities.data.shape[-1] == 2 and results[1].probabilities.data.shape[-1] == 3
    np.testing.assert_array_equal(results[1].labels.data, mask.astype(np.uint8))


def test_multiscale_is_the_mean_of_single_scale_runs_at_the_scaled_spacings():
    """``segment(scales=…)``: each pass is the plain segmentation by a model whose spacing is divided by the
    scale (built here by hand: same network, other spec); the probabilities are their mean on the scan grid
    and the labels its argmax. ``(1,)`` is the plain run; bad scales are refused; progress ends at its total."""
    import dataclasses

    from napari_vit3d.inference.engine import MULTISCALE

    model = tiny_model("segformer3d", spacing=(1.5, 1.5, 1.5))
    vol = scan(affine=np.diag([1.2, 0.9, 1.4, 1.0]))
    scales = (0.8, 1.0, 1.25)
    singles = []
    for s in scales:
        spec = dataclasses.replace(model.spec, spacing=(1.5 / s,) * 3)
        other = SimpleNamespace(network=model.network, spec=spec, weights_sha256=None)
        singles.append(segment(vol, other, device="cpu", use_cache=False).probabilities.data)
    ref = np.mean(singles, axis=0)
    assert not np.allclose(singles[0], singles[2], atol=1e-3)        # the scales do change the prediction
    calls = []
    res = segment(vol, model, device="cpu", use_cache=False, scales=scales, progress=lambda d, t: calls.append((d, t)))
    np.testing.assert_allclose(res.probabilities.data, ref, atol=1e-5)
    np.testing.assert_array_equal(res.labels.data, np.argmax(ref, axis=-1))
    assert res.labels.data.shape == vol.spatial_shape and np.allclose(res.labels.affine, vol.affine)
    assert res.metadata["settings"]["scales"] == list(scales)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls) and calls[-1][0] == calls[-1][1]
    plain = segment(vol, model, device="cpu", use_cache=False)
    one = segment(vol, model, device="cpu", use_cache=False, scales=(1.0,))
    np.testing.assert_array_equal(one.probabilities.data, plain.probabilities.data)
    assert len(MULTISCALE) == 3 and 1.0 in MULTISCALE
    for bad in ((), (0.1,), (float("nan"),), ("x",)):
        with pytest.raises(ModelError, match="scales"):
            segment(vol, model, device="cpu", use_cache=False, scales=bad)
