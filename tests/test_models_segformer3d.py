"""SegFormer3D: shapes on non-cubic input, size of the paper's configuration, the attention contract used
by the explanation layer (checked against torch's own scaled-dot-product attention), gradients."""

import math

import pytest
import torch
import torch.nn.functional as F

from napari_vit3d.errors import ModelError, Vit3dError
from napari_vit3d.models.segformer3d import EfficientSelfAttention, SegFormer3D

TINY = dict(embed_dims=(8, 16, 24, 32), num_heads=(1, 2, 3, 4), decoder_dim=16)


def tiny(**kw):
    torch.manual_seed(0)
    return SegFormer3D(in_channels=kw.pop("in_channels", 1), out_channels=kw.pop("out_channels", 3), **{**TINY, **kw})


def test_non_cubic_input_gives_full_resolution_logits_and_stage_grids():
    net = tiny(in_channels=2).eval()
    x = torch.randn(1, 2, 32, 64, 96)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (1, 3, 32, 64, 96)
    assert torch.isfinite(y).all()
    assert net.last_stage_shapes == [(8, 16, 24), (4, 8, 12), (2, 4, 6), (1, 2, 3)]
    attn = net.attention_modules()
    # stage 1 keys/values reduced by 4, stage 2 by 2, stages 3-4 not reduced
    assert [a.last_kv_shape for a in attn[::2]] == [(2, 4, 6), (2, 4, 6), (2, 4, 6), (1, 2, 3)]
    feats = net.forward_features(x)
    assert [tuple(f.shape[1:]) for f in feats] == [(8, 8, 16, 24), (16, 4, 8, 12), (24, 2, 4, 6), (32, 1, 2, 3)]


def test_sizes_not_divisible_by_32_are_a_user_error():
    with pytest.raises(Vit3dError, match="divisible by 32"):
        tiny()(torch.randn(1, 1, 32, 48, 32))


def test_paper_configuration_has_about_4_5_million_parameters():
    # BraTS setting of the paper: 4 MRI channels in, 3 regions out; the paper reports ~4.5 M parameters
    net = SegFormer3D(in_channels=4, out_channels=3)
    n = sum(p.numel() for p in net.parameters())
    assert 4.3e6 < n < 4.7e6, n
    assert [a.sr_ratio for a in net.attention_modules()] == [4, 4, 2, 2, 1, 1, 1, 1]
    assert [a.num_heads for a in net.attention_modules()] == [1, 1, 2, 2, 5, 5, 8, 8]
    assert all(a.head_dim == 32 for a in net.attention_modules())


@pytest.mark.parametrize("attn_scale", ["head_dim", "heads"])
def test_attention_hook_gives_row_stochastic_matrices_matching_sdpa(attn_scale):
    net = tiny(attn_scale=attn_scale).eval()
    captured, inputs = {}, {}

    def keep(name):
        return lambda mod, inp, out: captured.__setitem__(name, out.detach())

    def keep_in(name):
        return lambda mod, args: inputs.__setitem__(name, (args[0].detach(), args[1]))

    for i, a in enumerate(net.attention_modules()):
        assert isinstance(a, EfficientSelfAttention)
        a.softmax.register_forward_hook(keep(i))
        a.register_forward_pre_hook(keep_in(i))
    with torch.no_grad():
        net(torch.randn(2, 1, 32, 32, 64))
    for i, a in enumerate(net.attention_modules()):
        att = captured[i]
        n_q, n_kv = math.prod(a.last_q_shape), math.prod(a.last_kv_shape)
        assert att.shape == (2, a.num_heads, n_q, n_kv)
        torch.testing.assert_close(att.sum(-1), torch.ones(2, a.num_heads, n_q), atol=1e-5, rtol=0)
        # independent reference: rebuild q, k, v from the weights and use torch's SDPA
        x, grid = inputs[i]
        b, n, c = x.shape
        h, d = a.num_heads, a.head_dim
        q = F.linear(x, a.q.weight, a.q.bias).reshape(b, n, h, d).transpose(1, 2)
        if a.sr_ratio > 1:
            r = F.conv3d(x.transpose(1, 2).reshape(b, c, *grid), a.sr.weight, a.sr.bias, stride=a.sr_ratio)
            r = F.layer_norm(r.flatten(2).transpose(1, 2), (c,), a.sr_norm.weight, a.sr_norm.bias)
        else:
            r = x
        kv = F.linear(r, a.kv.weight, a.kv.bias).reshape(b, -1, 2, h, d)
        k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
        scale = d ** -0.5 if attn_scale == "head_dim" else h ** -0.5
        ref_att = torch.softmax(q @ k.transpose(-2, -1) * scale, -1)
        torch.testing.assert_close(att, ref_att, atol=1e-5, rtol=1e-4)
        ref_out = F.scaled_dot_product_attention(q, k, v, scale=scale).transpose(1, 2).reshape(b, n, c)
        with torch.no_grad():
            out = a(x, grid)
        torch.testing.assert_close(out, F.linear(ref_out, a.proj.weight, a.proj.bias), atol=1e-5, rtol=1e-4)


def test_attention_scale_changes_the_output():
    torch.manual_seed(1)
    a = EfficientSelfAttention(32, 4, 2, attn_scale="head_dim").eval()
    b = EfficientSelfAttention(32, 4, 2, attn_scale="heads").eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 4 * 4 * 4, 32) * 3
    assert not torch.allclose(a(x, (4, 4, 4)), b(x, (4, 4, 4)))
    with pytest.raises(ModelError):
        EfficientSelfAttention(32, 4, 2, attn_scale="sqrt")


def test_gradient_reaches_every_parameter_and_the_input():
    net = tiny().train()
    # 64 along W so that even stage 4 has two tokens (a single token's attention has no gradient)
    x = torch.randn(2, 1, 32, 32, 64, requires_grad=True)
    net(x)[:, 1].mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    no_grad = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert no_grad == []
    zero = [n for n, p in net.named_parameters() if p.grad.abs().sum() == 0]
    assert zero == []


# ---------------------------------------------------------------------------------------------
# full-resolution refinement head (ours, off by default)

def test_refinement_head_starts_as_the_plain_network():
    plain = tiny().eval()
    refined = tiny(refine_dim=4).eval()
    result = refined.load_state_dict(plain.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert sorted(result.missing_keys) == sorted(k for k in refined.state_dict() if k.startswith("refine"))
    x = torch.randn(1, 1, 32, 32, 64)
    with torch.no_grad():
        torch.testing.assert_close(refined(x), plain(x), rtol=0, atol=0)
        refined.refine[-1].bias.fill_(0.5)
        torch.testing.assert_close(refined(x), plain(x) + 0.5)


def _fit(net, x, y, steps=80):
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    for _ in range(steps):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        return float((net(x).argmax(1) == y).float().mean())


def test_refinement_head_draws_labels_at_input_resolution():
    # one-voxel stripes: the plain decoder's logits are a trilinear upsampling of a 1/4 grid and
    # cannot alternate from voxel to voxel; with the head the labels follow the image exactly
    torch.manual_seed(1)
    stripes = (torch.arange(32) % 2).float()
    x = stripes.view(1, 1, 1, 1, 32).expand(1, 1, 32, 32, 32).contiguous()
    y = stripes.long().view(1, 1, 1, 32).expand(1, 32, 32, 32).contiguous()
    plain_acc = _fit(tiny(out_channels=2), x, y)
    refined_acc = _fit(tiny(out_channels=2, refine_dim=4), x, y)
    assert plain_acc < 0.75, plain_acc
    assert refined_acc > 0.97, refined_acc


def test_refinement_head_size_is_checked():
    with pytest.raises(ModelError, match="refine_dim"):
        tiny(refine_dim=-1)
