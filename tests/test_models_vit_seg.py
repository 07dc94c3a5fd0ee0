"""ViTSeg (MONAI ViT with CLS + UNETR-style decoder) and the DINO projection head."""

import pytest
import torch
import torch.nn.functional as F
from monai.networks.blocks import SABlock, TransformerBlock

from napari_vit3d.errors import ModelError
from napari_vit3d.models.vit_seg import DINOHead, ViTSeg

TINY = dict(in_channels=1, out_channels=3, img_size=(32, 32, 32), hidden_size=48, mlp_dim=96, num_layers=2,
            num_heads=4, feature_size=8)


def tiny(**kw):
    torch.manual_seed(0)
    return ViTSeg(**{**TINY, **kw})


def test_segmentation_shape_cls_token_and_monai_attention_blocks():
    net = tiny(patch_size=8).eval()
    assert net.n_up == 3 and len(net.decoders) == 3  # patch 8 → 3 up-steps
    assert all(isinstance(b, TransformerBlock) and isinstance(b.attn, SABlock) for b in net.blocks)
    x = torch.randn(2, 1, 32, 32, 32)
    for blk in net.blocks:
        blk.attn.save_attn = True
    with torch.no_grad():
        y = net(x)
        tokens, hidden = net.forward_features(x)
    assert y.shape == (2, 3, 32, 32, 32)
    n = (32 // 8) ** 3
    assert tokens.shape == (2, 1 + n, 48) and len(hidden) == 2
    for blk in net.blocks:
        att = blk.attn.att_mat
        assert att.shape == (2, 4, 1 + n, 1 + n)
        torch.testing.assert_close(att.sum(-1), torch.ones(2, 4, 1 + n))
    # the CLS row of the last block, recomputed from that block's qkv weights (independent of MONAI's forward)
    blk = net.blocks[-1]
    h_in = blk.norm1(hidden[-2])
    q, k, _ = F.linear(h_in, blk.attn.qkv.weight, blk.attn.qkv.bias).reshape(2, 1 + n, 3, 4, 12).permute(2, 0, 3, 1, 4)
    ref = torch.softmax(q @ k.transpose(-1, -2) * blk.attn.scale, -1)
    torch.testing.assert_close(blk.attn.att_mat[:, :, 0], ref[:, :, 0].detach(), atol=1e-5, rtol=1e-4)


def test_cls_token_takes_part_and_every_parameter_learns():
    net = tiny(patch_size=8).train()
    x = torch.randn(2, 1, 32, 32, 32)
    net(x).mean().backward()
    assert net.encoder.cls_token.grad.abs().sum() > 0  # the segmentation depends on the CLS token
    # MONAI keeps an unused ``norm_cross_attn`` LayerNorm in every block for checkpoint compatibility
    missing = [n for n, p in net.named_parameters() if p.grad is None and ".norm_cross_attn." not in n]
    assert missing == []


@pytest.mark.parametrize("patch, n_up", [(4, 2), (16, 4)])
def test_patch_size_sets_the_decoder_depth(patch, n_up):
    net = tiny(patch_size=patch, num_layers=4).eval()
    assert net.n_up == n_up and len(net.decoders) == n_up
    with torch.no_grad():
        assert net(torch.randn(1, 1, 32, 32, 32)).shape == (1, 3, 32, 32, 32)


def test_bad_configurations_and_inputs_are_user_errors():
    with pytest.raises(ModelError, match="power of two"):
        tiny(patch_size=6, img_size=(36, 36, 36))
    with pytest.raises(ModelError, match="divisible"):
        tiny(patch_size=8, img_size=(32, 32, 36))
    net = tiny(patch_size=8).eval()
    with pytest.raises(ModelError, match="divisible by the patch 8"):
        net(torch.randn(1, 1, 32, 32, 36))
    with pytest.raises(ModelError, match="trained on"):
        net(torch.randn(1, 2, 32, 32, 32))
    # a larger input runs (positional embedding resized: whole-scan explanations), with logits on its grid
    with torch.no_grad():
        assert net(torch.randn(1, 1, 32, 32, 64)).shape[2:] == (32, 32, 64)
        x = torch.randn(1, 1, *net.img_size)
        ours, _ = net.forward_features(x)
        ref, _ = net.encoder(x)          # MONAI's own forward on the native window: the same tokens
        torch.testing.assert_close(ours, ref)


def test_dino_head_matches_the_paper_formula():
    torch.manual_seed(0)
    head = DINOHead(48, 100, hidden_dim=64, bottleneck_dim=16)
    x = torch.randn(5, 48)
    lin = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in lin] == [(48, 64), (64, 64), (64, 16)]
    z = F.gelu(F.linear(x, lin[0].weight, lin[0].bias))
    z = F.gelu(F.linear(z, lin[1].weight, lin[1].bias))
    z = F.linear(z, lin[2].weight, lin[2].bias)
    z = z / z.norm(dim=-1, keepdim=True)
    v = head.last_layer.parametrizations.weight.original1
    ref = z @ (v / v.norm(dim=1, keepdim=True)).T  # weight norm with magnitude 1
    torch.testing.assert_close(head(x), ref, atol=1e-5, rtol=1e-4)
    # the magnitude is frozen (norm_last_layer=True), the direction learns
    head(x).sum().backward()
    assert not head.last_layer.parametrizations.weight.original0.requires_grad
    assert v.grad is not None and v.grad.abs().sum() > 0


def test_encoder_is_monai_vit_with_cls():
    from monai.networks.nets import ViT

    net = tiny(patch_size=8).eval()  # seeds 0, then builds the encoder first
    torch.manual_seed(0)
    ref = ViT(in_channels=1, img_size=(32, 32, 32), patch_size=8, hidden_size=48, mlp_dim=96, num_layers=2,
              num_heads=4, classification=True).eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        tokens, hidden = net.forward_features(x)
        _, ref_hidden = ref(x)
    assert len(hidden) == len(ref_hidden) == 2
    for h, r in zip(hidden, ref_hidden):
        assert torch.equal(h, r)
    torch.testing.assert_close(tokens, ref.norm(ref_hidden[-1]))
