"""Rollout, DINO heads, point-attention placement and sanity checks against independent references.

* rollout equals a naive full-matrix implementation over MONAI's ``save_attn`` matrices;
* a model whose attention is one-hot to a known token puts the map's peak at that token's centre in
  world mm (``nibabel.affines.apply_affine`` on the preprocessing affine, not our placement code);
* re-initialising the weights changes every map (Adebayo et al. 2018): |Pearson r| < 0.5.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from monai.networks.nets import ViT
from nibabel.affines import apply_affine

from napari_vit3d.errors import GeometryError, ModelError, ResourceLimitError
from napari_vit3d.explain import (
    AttentionCapture,
    ExplainSession,
    attention_rollout,
    check_memory,
    dino_head_masks,
    dino_heads,
    erf_map,
    head_mask_labels,
    point_attention,
    rollout_vector,
    top_mass_mask,
)
from napari_vit3d.io import Volume
from napari_vit3d.models import ModelSpec
from napari_vit3d.models.segformer3d import SegFormer3D
from napari_vit3d.models.vit_seg import ViTSeg

LABELS = [{"index": 0, "name": "background"}, {"index": 1, "name": "brain"}]


# --------------------------------------------------------------------------------- rollout
def naive_rollout(mats, fusion, ratio, n_prefix, start):
    """Full N×N matrices, loops for the discard rule, (A + I) / rowsum(keepdim), product over layers."""
    n = mats[0].shape[-1]
    joint = torch.eye(n, dtype=torch.float64)
    for a in mats[start:]:
        a = a.double()
        f = {"mean": a.mean(0), "max": a.max(0).values, "min": a.min(0).values}[fusion].clone()
        if ratio > 0:
            for i in range(n):
                cand = [j for j in range(n) if j != i and j >= n_prefix]
                k = int(np.floor(ratio * len(cand)))
                for j in sorted(cand, key=lambda j: float(f[i, j]))[:k]:
                    f[i, j] = 0.0
        f = f + torch.eye(n, dtype=torch.float64)
        f = f / f.sum(dim=-1, keepdim=True)
        joint = f @ joint
    return joint


@pytest.mark.parametrize("cls,fusion,ratio,start", [(True, "mean", 0.0, 0), (True, "max", 0.5, 1),
                                                     (False, "min", 0.3, 0), (False, "mean", 0.9, 2)])
def test_rollout_equals_naive_full_matrix(cls, fusion, ratio, start):
    torch.manual_seed(4)
    net = ViT(in_channels=1, img_size=(12, 12, 12), patch_size=(4, 4, 4), hidden_size=24, mlp_dim=32,
              num_layers=4, num_heads=3, classification=cls, save_attn=True).eval()
    with AttentionCapture(net) as cap, torch.no_grad():
        net(torch.randn(1, 1, 12, 12, 12))
    mats = [b.attn.att_mat[0] for b in net.blocks]
    npre = int(cls)
    ref = naive_rollout(mats, fusion, ratio, npre, start)
    for seq in ([0, 5] if cls else [3, 26]):
        v = rollout_vector(cap, seq, head_fusion=fusion, discard_ratio=ratio, start_layer=start, chunk_bytes=3 * 28 * 4 * 5)
        torch.testing.assert_close(v, ref[seq], rtol=1e-5, atol=1e-7)  # float32 attention, float64 products
        assert abs(float(v.sum()) - 1.0) < 1e-9  # rows of a product of row-stochastic matrices sum to one


def test_top_mass_mask_matches_sorted_cumsum_rule():
    vals = np.array([[0.5, 0.05, 0.3, 0.15], [0.25, 0.25, 0.25, 0.25]])
    m = top_mass_mask(vals, 0.6)
    assert m[0].tolist() == [True, False, True, False]  # 0.5 < 0.6, then 0.8 ≥ 0.6: stop
    assert m[1].sum() == 3
    # DINO's formulation: ascending sort, cumulative share, keep above 1 - x
    rng = np.random.default_rng(0)
    v = rng.random((3, 50))
    for x in (0.1, 0.6, 0.9):
        srt = np.sort(v, axis=1)
        cum = np.cumsum(srt, axis=1) / srt.sum(1, keepdims=True)
        thr = np.array([srt[h][cum[h] > 1 - x].min() for h in range(3)])
        assert np.array_equal(top_mass_mask(v, x), v >= thr[:, None])


# --------------------------------------------------------------------------------- full path
def _vit_model(seed=0, roi=32):
    torch.manual_seed(seed)
    kw = dict(patch_size=8, hidden_size=32, mlp_dim=64, num_layers=2, num_heads=2, feature_size=4)
    net = ViTSeg(in_channels=1, out_channels=2, img_size=roi, **kw).eval()
    spec = ModelSpec(name=f"tiny-vit-{seed}", architecture="vit_seg", arch_kwargs=kw, roi_size=(roi,) * 3,
                     spacing=(2.0, 2.0, 2.0), normalization={"kind": "zscore"}, labels=LABELS)
    return SimpleNamespace(network=net, spec=spec, weights_sha256=None)


def _odd_scan(shape=(40, 36, 44), seed=0):
    """LPS-ish scan with 1 × 1.25 × 1 mm voxels, axes permuted: nothing lines up with the model grid."""
    aff = np.array([[0, -1.25, 0, 30.0], [-1.0, 0, 0, 20.0], [0, 0, 1.0, -25.0], [0, 0, 0, 1]])
    rng = np.random.default_rng(seed)
    data = rng.normal(100, 20, shape).astype(np.float32)
    data[10:30, 8:28, 12:32] += 80
    return Volume(data=data, affine=aff, name="odd")


def test_one_hot_attention_peaks_at_token_centre_in_world():
    model = _vit_model()
    net = model.network
    blk = net.blocks[1]
    target = (2, 1, 2)  # an interior token: its tent is not cut by the window edge
    n_grid = 4
    # a position embedding that marks one token; zero patch embedding, so tokens differ only there
    with torch.no_grad():
        net.encoder.patch_embedding.patch_embeddings.weight.zero_()
        net.encoder.patch_embedding.patch_embeddings.bias.zero_()
        pe = net.encoder.patch_embedding.position_embeddings
        pe.zero_()
        pe[0, int(np.ravel_multi_index(target, (n_grid,) * 3)), 0] = 5.0
        for b in net.blocks:  # block 0 must not mix the marker into other tokens
            b.attn.out_proj.weight.zero_(); b.attn.out_proj.bias.zero_()
            b.mlp.linear2.weight.zero_(); b.mlp.linear2.bias.zero_()
        marked = blk.norm1(pe[0, int(np.ravel_multi_index(target, (n_grid,) * 3))][None])[0]
        a = blk.attn
        a.qkv.weight.zero_()
        a.qkv.weight[32, :] = 40.0 * marked / (marked @ marked)   # key, head 0, dim 0: 40 on the marked token
        a.qkv.bias = torch.nn.Parameter(torch.zeros(96))
        a.qkv.bias.data[0] = 10.0  # query, head 0, dim 0 (scale 1/4: logit 100 vs 0)
    scan = _odd_scan(shape=(72, 60, 76))  # larger than the 64 mm window on every axis: no padding in it
    sess = ExplainSession(model, scan)
    vol = point_attention(model, scan, voxel=(20, 18, 22), layer=1, head=0, session=sess)
    assert vol.spatial_shape == scan.spatial_shape and np.allclose(vol.affine, scan.affine)
    start = np.asarray(vol.metadata["window"]["start_model_voxel"])
    # independent expectation: patch (2, 1, 2) of 8³ model voxels is centred on model voxel 8t + 3.5
    expect = apply_affine(sess.model_input.affine, start + 8 * np.asarray(target) + 3.5)
    d = vol.data
    top = np.argwhere(d >= d.max() - 1e-5)
    centroid = apply_affine(scan.affine, top.mean(0))
    assert np.linalg.norm(centroid - expect) < 0.75, (centroid, expect)
    # one-hot: 1 at the token centre, which lies between model voxels: (1 - 0.5 / 8)³ at the nearest ones
    assert abs(d.max() - (1 - 0.5 / 8) ** 3) < 0.01
    assert vol.metadata["layer"] == 1 and vol.metadata["head"] == 0 and vol.metadata["method"] == "attention"
    # the raw token map: its affine puts token (2, 1, 2) on the same world point
    tok = point_attention(model, scan, voxel=(20, 18, 22), layer=1, head=0, session=sess, grid="tokens")
    assert tok.data.shape == (4, 4, 4) and np.unravel_index(np.argmax(tok.data), tok.data.shape) == target
    np.testing.assert_allclose(apply_affine(tok.affine, target), expect, atol=1e-6)
    # the query token is the one holding the clicked voxel
    qc = np.asarray(vol.metadata["query"]["token_centre_world_mm"])
    clicked = apply_affine(scan.affine, (20, 18, 22))
    assert np.all(np.abs(apply_affine(np.linalg.inv(sess.model_input.affine), qc)
                         - apply_affine(np.linalg.inv(sess.model_input.affine), clicked)) <= 4.0 + 1e-6)


def _corr(a, b):
    a, b = np.ravel(a).astype(float), np.ravel(b).astype(float)
    keep = (a != 0) | (b != 0)
    return float(np.corrcoef(a[keep], b[keep])[0, 1])


def test_weight_randomisation_changes_every_map():
    scan = _odd_scan()
    m1, m2 = _vit_model(seed=1), _vit_model(seed=2)
    for m in (m1, m2):  # ViTSeg inits position embeddings to zero: make them random like trained ones
        with torch.no_grad():
            m.network.encoder.patch_embedding.position_embeddings.normal_(0, 1.0)
    q = dict(voxel=(20, 18, 22))
    s1, s2 = ExplainSession(m1, scan), ExplainSession(m2, scan)
    pairs = {
        "attention": [point_attention(m, scan, layer=1, head="mean", session=s, **q) for m, s in ((m1, s1), (m2, s2))],
        "rollout": [attention_rollout(m, scan, session=s) for m, s in ((m1, s1), (m2, s2))],
        "dino": [dino_heads(m, scan, session=s, **q) for m, s in ((m1, s1), (m2, s2))],
        "erf (signed gradient)": [erf_map(m, scan, target_class=1, absolute=False, session=s, **q)
                                  for m, s in ((m1, s1), (m2, s2))],
    }
    for name, (a, b) in pairs.items():
        assert np.isfinite(a.data).all() and a.data.std() > 0, name
        r = _corr(a.data, b.data)
        assert abs(r) < 0.5, (name, r)
    # |gradient| shares the architecture's decay around the query (full-resolution skip convolutions),
    # so its bound is looser; it must still change
    a, b = pairs["erf (signed gradient)"]
    r = _corr(np.abs(a.data), np.abs(b.data))
    assert r < 0.9, r
    assert pairs["dino"][0].data.shape == scan.spatial_shape + (2,)


def test_dino_heads_and_masks_on_scan_grid():
    scan = _odd_scan()
    m = _vit_model(seed=3)
    sess = ExplainSession(m, scan)
    heads = dino_heads(m, scan, session=sess)
    masks = dino_head_masks(m, scan, keep_mass=0.5, session=sess)
    assert heads.data.shape == masks.data.shape == scan.spatial_shape + (2,)
    assert masks.data.dtype == np.uint8 and set(np.unique(masks.data)) <= {0, 1}
    # inside the window the masked voxels hold the higher attention values of each head
    for h in range(2):
        inside = heads.data[..., h] > 0
        kept, dropped = heads.data[..., h][inside & (masks.data[..., h] == 1)], heads.data[..., h][inside & (masks.data[..., h] == 0)]
        assert kept.size and dropped.size and np.median(kept) > np.median(dropped)
    lab = head_mask_labels(masks, heads)
    assert lab.data.ndim == 3 and set(np.unique(lab.data)) <= {0, 1, 2}
    assert np.array_equal(lab.data > 0, masks.data.any(-1))


def test_swin_and_segformer_point_attention_metadata_and_reuse():
    torch.manual_seed(5)
    net = SegFormer3D(in_channels=1, out_channels=2, embed_dims=(8, 16, 16, 16), num_heads=(1, 2, 2, 2),
                      depths=(1, 1, 1, 1), decoder_dim=16).eval()
    spec = ModelSpec(name="tiny-segformer", architecture="segformer3d", roi_size=(32, 32, 32), spacing=(2.0, 2.0, 2.0),
                     normalization={"kind": "zscore"}, labels=LABELS)
    model = SimpleNamespace(network=net, spec=spec)
    scan = _odd_scan()
    sess = ExplainSession(model, scan)
    a = point_attention(model, scan, voxel=(20, 18, 22), layer=0, head="all", session=sess)
    assert a.data.shape == scan.spatial_shape + (1,) or a.data.shape == scan.spatial_shape
    assert a.metadata["key_grid"]["step_window_voxels"] == [16.0, 16.0, 16.0]
    b = point_attention(model, scan, voxel=(21, 18, 22), layer=1, head=1, session=sess)
    assert b.metadata["window"] == a.metadata["window"] and len(sess._captures) == 1  # no new forward
    with pytest.raises(ModelError):
        attention_rollout(model, scan, voxel=(20, 18, 22), session=sess)
    with pytest.raises(ModelError):
        point_attention(model, scan, voxel=(20, 18, 22), layer=9, session=sess)
    with pytest.raises(GeometryError):
        point_attention(model, scan, voxel=(200, 18, 22), session=sess)


def test_memory_refusal_is_a_clear_error():
    m = _vit_model()
    with pytest.raises(ResourceLimitError, match="needs about"):
        check_memory(m.network, (32, 32, 32), "erf", available=1024)
