"""Attention rows computed from captured q/k equal the attention the networks really used.

References are independent of our capture code: MONAI's own ``save_attn`` matrices (``att_mat``),
the output of Swin's ``softmax`` module and of SegFormer3D's ``softmax`` module (read by a plain
forward hook here).
"""

import numpy as np
import pytest
import torch
from monai.networks.nets import UNETR, SwinUNETR, ViT

from napari_vit3d.explain.capture import AttentionCapture
from napari_vit3d.models.segformer3d import SegFormer3D


def _tiny_vit(cls: bool, seed=0):
    torch.manual_seed(seed)
    return ViT(in_channels=1, img_size=(16, 16, 16), patch_size=(4, 4, 4), hidden_size=32, mlp_dim=64,
               num_layers=3, num_heads=4, classification=cls, save_attn=True).eval()


@pytest.mark.parametrize("cls", [True, False])
def test_vit_rows_equal_save_attn(cls):
    net = _tiny_vit(cls)
    x = torch.randn(1, 1, 16, 16, 16)
    with AttentionCapture(net) as cap, torch.no_grad():
        net(x)
    npre = 1 if cls else 0
    for layer in range(3):
        ref = net.blocks[layer].attn.att_mat[0]  # (heads, N, N), saved by MONAI
        assert cap.n_prefix(layer) == npre
        for tok in [(0, 0, 0), (1, 2, 3), (3, 3, 3)]:
            r = cap.row(layer, tok)
            seq = npre + int(np.ravel_multi_index(tok, (4, 4, 4)))
            full = torch.cat([r.prefix, r.spatial.reshape(4, -1)], dim=1)
            torch.testing.assert_close(full, ref[:, seq], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(full.sum(-1), torch.ones(4), rtol=1e-5, atol=1e-6)
        if cls:
            r = cap.row(layer, "cls")
            torch.testing.assert_close(torch.cat([r.prefix, r.spatial.reshape(4, -1)], 1), ref[:, 0], rtol=1e-5, atol=1e-6)


def test_unetr_rows_equal_save_attn_and_grid():
    torch.manual_seed(1)
    net = UNETR(in_channels=1, out_channels=2, img_size=(32, 32, 32), feature_size=4, hidden_size=48, mlp_dim=64,
                num_heads=4, save_attn=True).eval()
    with AttentionCapture(net, layers=[0, 11]) as cap, torch.no_grad():
        net(torch.randn(1, 1, 32, 32, 32))
    g = cap.query_grid(11)
    assert g.shape == (2, 2, 2) and g.origin == (7.5, 7.5, 7.5) and g.step == (16, 16, 16)
    for layer in (0, 11):
        ref = net.vit.blocks[layer].attn.att_mat[0]
        r = cap.row(layer, (1, 0, 1))
        torch.testing.assert_close(r.spatial.reshape(4, -1), ref[:, 5], rtol=1e-5, atol=1e-6)
    assert 5 not in cap.store and set(cap.store) == {0, 11}  # not requested: nothing captured


def _swin_softmax_reference(net, x):
    """Every WindowAttention.softmax output, in forward order (plain hooks, no capture code)."""
    outs = []
    hs = [m.attn.softmax.register_forward_hook(lambda m, a, o: outs.append(o.detach()))
          for layer in (net.swinViT.layers1, net.swinViT.layers2, net.swinViT.layers3, net.swinViT.layers4)
          for m in layer[0].blocks]
    with torch.no_grad():
        net(x)
    for h in hs:
        h.remove()
    return outs


def _window_reference_row(ref, stage_shape, ws, shift, token):
    """Independent window bookkeeping: roll the stage grid, partition with numpy, find the row."""
    d = np.asarray(stage_shape)
    ws = np.asarray(ws)
    padded = (np.ceil(d / ws) * ws).astype(int)
    ids = np.full(tuple(padded), -1)
    ids[: d[0], : d[1], : d[2]] = np.arange(int(np.prod(d))).reshape(tuple(d))
    rolled = np.roll(ids, shift=tuple(-int(s) for s in shift), axis=(0, 1, 2))
    nw = padded // ws
    wins = rolled.reshape(nw[0], ws[0], nw[1], ws[1], nw[2], ws[2]).transpose(0, 2, 4, 1, 3, 5).reshape(-1, int(np.prod(ws)))
    flat = int(np.ravel_multi_index(tuple(token), tuple(d)))
    w, t = [int(v[0]) for v in np.nonzero(wins == flat)]
    row = ref[w, :, t]  # (heads, n)
    out = torch.zeros(row.shape[0], int(np.prod(d)))
    keep = wins[w] >= 0
    out[:, torch.as_tensor(wins[w][keep])] = row[:, torch.as_tensor(np.nonzero(keep)[0])]
    return out, row[:, torch.as_tensor(np.nonzero(~keep)[0], dtype=torch.long)].sum(-1)


def test_swin_rows_equal_softmax_module():
    torch.manual_seed(2)
    # 64³ input, patch 2: stage grids 32, 16, 8, 4 with window 7 -> padding at stages 0-2 (32, 16, 8 are not
    # multiples of 7) and a shrunk window (4³) at stage 3
    net = SwinUNETR(in_channels=1, out_channels=2, feature_size=12, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2),
                    use_v2=False).eval()
    x = torch.randn(1, 1, 64, 64, 64)
    refs = _swin_softmax_reference(net, x)
    with AttentionCapture(net) as cap, torch.no_grad():
        net(x)
    assert len(cap.layers) == 8
    rng = np.random.default_rng(0)
    for layer, ref in enumerate(refs):
        r0 = cap.row(layer, (0, 0, 0))
        shape = r0.info["stage_shape"]
        for tok in [(0, 0, 0), tuple(int(s) - 1 for s in shape), tuple(int(v) for v in rng.integers(0, shape))]:
            r = cap.row(layer, tok)
            exp, pad = _window_reference_row(ref, shape, r.info["window_size"], r.info["shift"], tok)
            torch.testing.assert_close(r.spatial.reshape(r.heads, -1), exp, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(r.padding_mass, pad, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(r.spatial.reshape(r.heads, -1).sum(-1) + r.padding_mass,
                                       torch.ones(r.heads), rtol=1e-5, atol=1e-6)
    assert cap.row(1, (0, 0, 0)).info["shifted"] and not cap.row(0, (0, 0, 0)).info["shifted"]
    assert cap.row(7, (0, 0, 0)).info["window_size"] == (4, 4, 4)  # stage 3 grid is 4³ < 7³: shrunk window


def test_segformer_rows_equal_softmax_module_and_reduced_centres():
    torch.manual_seed(3)
    net = SegFormer3D(in_channels=1, out_channels=2, embed_dims=(8, 16, 16, 16), num_heads=(1, 2, 2, 2),
                      depths=(1, 1, 1, 1), decoder_dim=16).eval()
    outs = []
    hs = [a.softmax.register_forward_hook(lambda m, a_, o: outs.append(o.detach())) for a in net.attention_modules()]
    x = torch.randn(1, 1, 32, 32, 32)
    with AttentionCapture(net) as cap, torch.no_grad():
        net(x)
    for h in hs:
        h.remove()
    for layer, ref in enumerate(outs):
        qg = cap.query_grid(layer)
        tok = tuple(s - 1 for s in qg.shape)
        r = cap.row(layer, tok)
        torch.testing.assert_close(r.spatial.reshape(r.heads, -1), ref[0][:, qg.flat(tok)], rtol=1e-5, atol=1e-6)
    # stage 0: conv k7 s4 p3 -> token a centred on input voxel 4a; keys reduced by 4 -> centre 4*(4b + 1.5)
    assert cap.query_grid(0).origin == (0, 0, 0) and cap.query_grid(0).step == (4, 4, 4)
    assert cap.key_grid(0).origin == (6, 6, 6) and cap.key_grid(0).step == (16, 16, 16)
    # stage 1: conv k3 s2 p1 on stage 0 -> centre 8a; sr 2 -> centre 8*(2b + 0.5)
    assert cap.query_grid(1).step == (8, 8, 8) and cap.key_grid(1).origin == (4, 4, 4)
