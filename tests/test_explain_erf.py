"""ERF against plain autograd through a plain forward, central finite differences, and a Gaussian
with known extent for the statistics."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from scipy.special import erf as gauss_erf

from napari_vit3d.errors import Cancelled, ModelError
from napari_vit3d.explain import ExplainSession, erf_map, erf_statistics, input_gradient, model_erf
from napari_vit3d.io import Volume
from napari_vit3d.models import ModelSpec
from napari_vit3d.models.segformer3d import SegFormer3D

LABELS = [{"index": 0, "name": "background"}, {"index": 1, "name": "brain"}]


def _tiny(seed=0):
    torch.manual_seed(seed)
    net = SegFormer3D(in_channels=1, out_channels=2, embed_dims=(8, 8, 8, 8), num_heads=(1, 1, 1, 1),
                      depths=(1, 1, 1, 1), decoder_dim=8).eval()
    spec = ModelSpec(name="tiny-erf", architecture="segformer3d", roi_size=(32, 32, 32), spacing=(1.0, 1.0, 1.0),
                     normalization={"kind": "none"}, labels=LABELS)
    return SimpleNamespace(network=net, spec=spec)


@pytest.mark.parametrize("flip", [False, True])
def test_erf_equals_plain_autograd_on_scan_grid(flip):
    model = _tiny()
    rng = np.random.default_rng(0)
    data = rng.normal(size=(32, 32, 32)).astype(np.float32)
    aff = np.diag([-1.0 if flip else 1.0, 1.0, 1.0, 1.0])  # LAS: the model sees the array flipped on axis 0
    scan = Volume(data=data, affine=aff, name="s")
    vox = (9, 20, 14)
    vol = erf_map(model, scan, voxel=vox, target_class=1)
    # reference: the array as the model sees it (RAS), one plain forward, autograd, back to file order
    model_arr = np.flip(data, 0).copy() if flip else data
    mv = (31 - vox[0], vox[1], vox[2]) if flip else vox
    x = torch.from_numpy(model_arr)[None, None].requires_grad_(True)
    model.network(x)[0, 1][mv].backward()
    ref = x.grad[0, 0].abs().numpy()
    ref = np.flip(ref, 0) if flip else ref
    np.testing.assert_allclose(vol.data, ref, rtol=1e-4, atol=1e-7)
    assert vol.metadata["method"] == "erf" and vol.metadata["target_class"] == 1
    lg = erf_map(model, scan, voxel=vox, target_class=1, log1p=True)
    np.testing.assert_allclose(lg.data, np.log1p(ref), rtol=1e-4, atol=1e-7)


def test_input_gradient_matches_finite_differences():
    model = _tiny(seed=1)
    net = model.network.double()
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(1, 1, 32, 32, 32)))
    q = (16, 10, 21)
    g = input_gradient(net, x, 1, voxel=q)[0]
    region = torch.zeros(32, 32, 32, dtype=torch.float64)
    region[4:9, 20:26, 3:7] = 1.0
    gr = input_gradient(net, x, 0, region=region)[0]
    eps = 1e-5

    def f(xx, cls, use_region):
        with torch.no_grad():
            out = net(xx)[0, cls]
            return float((out * region).sum() if use_region else out[q])

    for p in [(16, 10, 21), (15, 11, 20), (3, 30, 2)]:
        for grad, cls, use_region in ((g, 1, False), (gr, 0, True)):
            xp, xm = x.clone(), x.clone()
            xp[(0, 0) + p] += eps
            xm[(0, 0) + p] -= eps
            fd = (f(xp, cls, use_region) - f(xm, cls, use_region)) / (2 * eps)
            assert abs(fd - float(grad[p])) <= 1e-6 + 1e-4 * abs(fd), (p, fd, float(grad[p]))
    with pytest.raises(ModelError):
        input_gradient(net, x, 5, voxel=q)


def test_erf_statistics_on_a_gaussian_with_known_extent():
    sig = np.array([3.0, 5.0, 4.0])  # mm
    sp = np.array([1.0, 1.0, 2.0])
    shape = (81, 101, 41)
    c = (np.asarray(shape) - 1) / 2
    axes = [np.exp(-0.5 * ((np.arange(n) - c[a]) * sp[a] / sig[a]) ** 2) for a, n in enumerate(shape)]
    g = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    aff = np.diag([*sp, 1.0])
    aff[:3, 3] = [10.0, -4.0, 7.0]
    vol = Volume(data=g.astype(np.float32), affine=aff, name="g")
    st = erf_statistics(vol, centre_world=aff[:3, :3] @ c + aff[:3, 3])
    np.testing.assert_allclose(st["sigma_mm"], sig, rtol=0.02)
    z = {0.5: 0.6745, 0.9: 1.6449, 0.99: 2.5758}  # centred normal quantiles
    for f, zf in z.items():
        np.testing.assert_allclose(st["axis_extent_mm"][f"{f:g}"], 2 * zf * sig, atol=sp.max() + 1e-6)
        # cube of side s holds prod_a erf(s / (2 sqrt(2) sigma_a)) of the mass
        s = brentq(lambda s: np.prod(gauss_erf(s / (2 * np.sqrt(2) * sig))) - f, 1e-3, 100)
        assert abs(st["box_side_mm"][f"{f:g}"] - s) <= 2 * sp.max(), (f, st["box_side_mm"], s)


def test_model_erf_averages_aligned_queries_and_cancels():
    model = _tiny(seed=2)
    rng = np.random.default_rng(2)
    scan = Volume(data=rng.normal(size=(48, 40, 40)).astype(np.float32), affine=np.eye(4), name="s")
    sess = ExplainSession(model, scan)
    calls = []
    k = model_erf(model, scan, n_samples=2, seed=3, session=sess, progress=lambda d, t: calls.append((d, t)))
    assert k.data.shape == (32, 32, 32) and calls[-1] == (2, 2)
    np.testing.assert_allclose(k.affine[:3, :3] @ np.full(3, 16.0) + k.affine[:3, 3], 0.0, atol=1e-9)
    ref = np.zeros((32, 32, 32))
    for q in k.metadata["query_model_voxels"]:
        start = np.asarray(q) - 16
        sl = tuple(slice(s, s + 32) for s in start)
        x = sess.model_input.tensor[(slice(None), slice(None)) + sl].clone().requires_grad_(True)
        model.network(x)[0, 1, 16, 16, 16].backward()
        ref += x.grad[0, 0].abs().numpy() / 2
    np.testing.assert_allclose(k.data, ref, rtol=1e-4, atol=1e-8)
    with pytest.raises(Cancelled):
        model_erf(model, scan, n_samples=3, session=sess, cancel=lambda: True)


def test_erf_class_is_an_output_channel_named_by_its_label():
    """``target_class`` is the output channel; with label values that are not 0..C-1 (0 and 3 here) the
    metadata used to look the name up by label value and reported "1" instead of the label's name."""
    model = _tiny()
    model.spec = ModelSpec(name="tiny-erf", architecture="segformer3d", roi_size=(32, 32, 32),
                           spacing=(1.0, 1.0, 1.0), normalization={"kind": "none"},
                           labels=[{"index": 0, "name": "background"}, {"index": 3, "name": "tumour"}])
    scan = Volume(data=np.random.default_rng(1).normal(size=(32, 32, 32)).astype(np.float32), affine=np.eye(4))
    vol = erf_map(model, scan, voxel=(10, 11, 12), target_class=1)
    assert vol.metadata["target_class"] == 1
    assert vol.metadata["class_name"] == "tumour" and vol.metadata["label_value"] == 3
