"""Whole-scan DINO head maps (windows stitched) and "similar tissue" feature similarity.

References: a naive voxel-coverage count; a naive loop for the centre-weighted mean; a forward hook on
the encoder's final layer norm (not our feature code) with numpy cosines and scipy's trilinear
``map_coordinates`` for the placement between patch centres.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_vit3d.errors import ModelError
from napari_vit3d.explain import ExplainSession, dino_heads, feature_similarity, run_method, stitch, tile_starts
from napari_vit3d.explain.tokens import TokenGrid
from napari_vit3d.explain.whole_scan import blend_weights
from napari_vit3d.io import Volume
from napari_vit3d.models import ModelSpec
from napari_vit3d.models.vit_seg import ViTSeg

LABELS = [{"index": 0, "name": "background"}, {"index": 1, "name": "brain"}]


def _vit(roi, seed=0, spacing=2.0):
    torch.manual_seed(seed)
    kw = dict(patch_size=8, hidden_size=32, mlp_dim=64, num_layers=2, num_heads=2, feature_size=4)
    net = ViTSeg(in_channels=1, out_channels=2, img_size=roi, **kw).eval()
    with torch.no_grad():  # ViTSeg starts its position embedding at zero: make it random like a trained one
        net.encoder.patch_embedding.position_embeddings.normal_(0, 1.0)
    spec = ModelSpec(name=f"tiny-vit-{roi}", architecture="vit_seg", arch_kwargs=kw, roi_size=(roi,) * 3,
                     spacing=(spacing,) * 3, normalization={"kind": "zscore"}, labels=LABELS)
    return SimpleNamespace(network=net, spec=spec, weights_sha256=None)


def _odd_scan(shape=(40, 36, 44)):
    """LPS-ish 1 × 1.25 × 1 mm voxels, axes permuted; a bright block inside."""
    aff = np.array([[0, -1.25, 0, 30.0], [-1.0, 0, 0, 20.0], [0, 0, 1.0, -25.0], [0, 0, 0, 1]])
    data = np.random.default_rng(0).normal(100, 20, shape).astype(np.float32)
    data[10:30, 8:28, 12:32] += 80
    return Volume(data=data, affine=aff, name="odd")


@pytest.mark.parametrize("shape,roi", [((20, 23, 22), (16, 16, 16)), ((16, 40, 9), (16, 16, 16)),
                                       ((64, 96, 70), (32, 48, 32))])
def test_tiles_cover_every_voxel_and_stay_inside(shape, roi):
    starts = tile_starts(shape, roi)
    count = np.zeros(shape, int)
    for s in starts:
        assert all(0 <= a and (a + r <= n or (a == 0 and n <= r)) for a, r, n in zip(s, roi, shape))
        count[tuple(slice(a, a + r) for a, r in zip(s, roi))] += 1
    assert count.min() >= 1
    for ax in range(3):  # consecutive starts at most half a window apart
        firsts = sorted({s[ax] for s in starts})
        assert all(b - a <= roi[ax] // 2 for a, b in zip(firsts, firsts[1:]))


def test_stitch_is_the_centre_weighted_mean_of_the_windows():
    model = _vit(16)
    sess = ExplainSession(model, _odd_scan())
    grid = TokenGrid.tiles(sess.roi, (2, 2, 2))
    value = {}

    def const(start):
        value[start] = 1.0 + len(value)
        return np.full((2, 2, 2, 1), value[start], np.float32), grid

    out, starts = stitch(sess, const)
    assert len(starts) > 1
    # naive: per voxel, loop over windows, Gaussian weights written out here
    num = np.zeros(sess.grid_shape)
    den = np.zeros(sess.grid_shape)
    for s in starts:
        for i in range(16):
            for j in range(16):
                for k in range(16):
                    w = np.exp(-0.5 * sum(((c - 7.5) / 4.0) ** 2 for c in (i, j, k)))
                    w = max(w / np.exp(-0.5 * 3 * (0.5 / 4.0) ** 2), 1e-3)
                    num[s[0] + i, s[1] + j, s[2] + k] += w * value[s]
                    den[s[0] + i, s[1] + j, s[2] + k] += w
    np.testing.assert_allclose(out[0], num / den, rtol=1e-5)
    assert blend_weights((16, 16, 16)).max() == pytest.approx(1.0)


def test_dino_heads_cover_the_whole_scan_and_agree_with_one_window_when_it_fits():
    scan = _odd_scan()
    small = _vit(16)                     # a 32 mm window on a scan of about 40 × 50 × 44 mm
    tiles = dino_heads(small, scan, coverage="tiles")
    one = dino_heads(small, scan, coverage="window")
    whole = dino_heads(small, scan)
    assert whole.data.shape == tiles.data.shape == one.data.shape == scan.spatial_shape + (2,)
    assert (tiles.data > 0).all() and (whole.data > 0).all()      # every voxel of the scan gets a value
    assert (one.data == 0).any()             # one window does not cover the scan
    assert len(tiles.metadata["windows"]) > 1 and tiles.metadata["coverage"] == "tiles"
    assert whole.metadata["coverage"] == "scan" and whole.metadata["token_grid"] == [3, 3, 3]

    big = _vit(32)                          # the whole model grid fits in one window
    sess = ExplainSession(big, scan)
    a = dino_heads(big, scan, session=sess, coverage="tiles")
    b = dino_heads(big, scan, session=sess, coverage="window")
    assert len(a.metadata["windows"]) == 1
    np.testing.assert_allclose(a.data, b.data * 64, rtol=1e-5, atol=1e-6)   # 4³ patch tokens: 1 = uniform
    with pytest.raises(ModelError, match="coverage"):
        dino_heads(big, scan, coverage="everything")


def test_similarity_equals_numpy_on_hooked_features():
    """A RAS scan on the model's 2 mm grid, exactly one window: scan map = model-grid map."""
    model = _vit(32, seed=5)
    rng = np.random.default_rng(1)
    data = rng.normal(0, 1, (32, 32, 32)).astype(np.float32)
    data[4:20, 6:26, 8:30] += 3.0
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = (-31.0, 12.0, 5.0)
    scan = Volume(data=data, affine=aff, name="ras")
    voxel = (10, 13, 20)

    feats = {}
    hook = model.network.encoder.norm.register_forward_hook(lambda m, i, o: feats.setdefault("f", o.detach()))
    try:
        sim = feature_similarity(model, scan, voxel=voxel, coverage="window")
    finally:
        hook.remove()
    f = feats["f"][0, 1:].numpy().reshape(4, 4, 4, -1)          # CLS dropped; patch tokens in x, y, z order
    q = f[tuple(np.floor((np.array(voxel) - 3.5) / 8 + 0.5).astype(int))]
    cos = (f @ q) / (np.linalg.norm(f, axis=-1) * np.linalg.norm(q))
    coords = np.stack(np.meshgrid(*[(np.arange(32) - 3.5) / 8] * 3, indexing="ij"))
    expected = ndimage.map_coordinates(cos, coords, order=1, mode="nearest")
    np.testing.assert_allclose(sim.data, expected, rtol=1e-4, atol=1e-5)
    assert sim.metadata["method"] == "similar" and sim.metadata["query_token"] == [1, 1, 2]


def test_similarity_over_the_whole_scan_through_the_registry():
    scan = _odd_scan()
    model = _vit(16, seed=2)
    for coverage in ("scan", "tiles"):
        vol = run_method("similar", model, scan, voxel=(20, 18, 22), coverage=coverage)
        assert vol.data.shape == scan.spatial_shape and vol.metadata["coverage"] == coverage
        assert np.isfinite(vol.data).all() and vol.data.min() >= -1.0 - 1e-5 and vol.data.max() <= 1.0 + 1e-5
    assert len(vol.metadata["windows"]) > 1


def test_one_pass_over_the_whole_scan_equals_a_hand_made_resized_embedding():
    """The whole-scan pass is MONAI's ViT with its positional embedding swapped for a trilinearly resized
    copy: build that ViT by hand (torch's interpolate, a fresh MONAI ViT at the larger size, weights copied)
    and compare the CLS attention of the last block (MONAI's own save_attn) with ours."""
    from monai.networks.nets import ViT

    model = _vit(16, seed=4)
    net = model.network
    scan = _odd_scan()
    sess = ExplainSession(model, scan)
    grid = [-(-int(s) // 8) * 8 for s in sess.model_input.tensor.shape[2:]]
    heads = dino_heads(model, scan, session=sess)
    ref = ViT(in_channels=1, img_size=grid, patch_size=8, hidden_size=32, mlp_dim=64, num_layers=2, num_heads=2,
              proj_type="conv", pos_embed_type="learnable", classification=True, spatial_dims=3,
              save_attn=True).eval()
    state = {k: v for k, v in net.encoder.state_dict().items() if not k.startswith("classification_head")}
    pos = state["patch_embedding.position_embeddings"]
    g = [s // 8 for s in grid]
    state["patch_embedding.position_embeddings"] = torch.nn.functional.interpolate(
        pos.transpose(1, 2).reshape(1, 32, 2, 2, 2), size=g, mode="trilinear", align_corners=False
    ).flatten(2).transpose(1, 2)
    ref.load_state_dict(state, strict=False)
    x = torch.nn.functional.pad(sess.model_input.tensor, [0, grid[2] - sess.model_input.tensor.shape[4],
                                                           0, grid[1] - sess.model_input.tensor.shape[3],
                                                           0, grid[0] - sess.model_input.tensor.shape[2]])
    with torch.no_grad():
        ref(x)
    att = ref.blocks[-1].attn.att_mat[0, :, 0, 1:].reshape(2, *g).numpy() * int(np.prod(g))   # (heads, grid)
    # our map on the scan at the token centres equals MONAI's: compare via the model grid of a RAS copy
    from napari_vit3d.explain.whole_scan import whole_scan_session
    whole = whole_scan_session(sess)
    cap = whole.capture((0, 0, 0))
    ours = cap.row(cap.resolve_layer(None), "cls").spatial.numpy() * int(np.prod(g))
    np.testing.assert_allclose(ours, att, rtol=1e-4, atol=1e-6)
    assert heads.metadata["token_grid"] == g
    with pytest.raises(Exception, match="query point"):
        run_method("similar", model, scan)
