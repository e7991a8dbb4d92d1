"""The sigma-conditioned 3D UNet: shape checks, sigma scaling, conditioning, attention switch."""

import pytest
import torch
from torch import nn

from spatial_msma.io import InputError
from spatial_msma.score.network import NetworkConfig, ScoreNet

torch.set_num_threads(1)

TINY = {"channels": [8, 8], "norm_num_groups": 4}


def _perturbed(net: ScoreNet, seed: int = 0) -> ScoreNet:
    """Give the zero-initialised output and residual convolutions random weights (as training would)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in net.parameters():
            if param.abs().sum() == 0:
                param.copy_(0.1 * torch.randn(param.shape, generator=gen))
    return net


def test_config_errors_name_the_key():
    with pytest.raises(InputError, match="unknown key"):
        NetworkConfig.from_dict({"chanels": [8, 8]})
    with pytest.raises(InputError, match="attention_levels"):
        NetworkConfig.from_dict({"channels": [8, 8], "attention_levels": [False], "norm_num_groups": 4})
    with pytest.raises(InputError, match="normalised away"):
        NetworkConfig.from_dict({"channels": [8, 8], "norm_num_groups": 8})
    cfg = NetworkConfig.from_dict(TINY)
    assert cfg.attention_levels == (False, False) and cfg.divisor == 2
    assert NetworkConfig.from_dict(cfg.to_dict()) == cfg


def test_shape_must_divide_by_the_unet_depth():
    with pytest.raises(InputError, match="multiples of 4"):
        ScoreNet(2, (16, 18, 16), NetworkConfig.from_dict({"channels": [8, 8, 8], "norm_num_groups": 4}))


def test_untrained_net_predicts_zero_and_output_is_divided_by_sigma():
    torch.manual_seed(0)
    net = ScoreNet(2, (16, 16, 16), NetworkConfig.from_dict(TINY))
    x = torch.randn(2, 2, 16, 16, 16)
    assert torch.count_nonzero(net(x, torch.tensor([0.1, 1.0]))) == 0
    _perturbed(net)
    sigma = torch.tensor([0.5, 2.0])
    out = net(x, sigma)
    raw = net.unet(x, net.net_cfg.timestep_scale * torch.log(sigma))
    assert torch.allclose(out * sigma.reshape(-1, 1, 1, 1, 1), raw, atol=1e-6)
    assert out.shape == x.shape


def test_output_depends_on_sigma_through_the_embedding():
    torch.manual_seed(0)
    net = _perturbed(ScoreNet(2, (16, 16, 16), NetworkConfig.from_dict(TINY)))
    x = torch.randn(1, 2, 16, 16, 16)
    a = net(x, torch.tensor([0.1])) * 0.1
    b = net(x, torch.tensor([1.0])) * 1.0
    assert (a - b).norm() > 1e-3 * a.norm()
    # a single sigma broadcasts over the batch
    batch = x.repeat(3, 1, 1, 1, 1)
    assert torch.allclose(net(batch, torch.tensor(0.1))[1:2], a / 0.1, rtol=1e-4, atol=1e-4)


def test_mid_attention_switch_and_flash_choice():
    without = ScoreNet(2, (16, 16, 16), NetworkConfig.from_dict({**TINY, "mid_attention": False}))
    assert isinstance(without.unet.middle_block.attention, nn.Identity)
    with_attn = ScoreNet(2, (16, 16, 16), NetworkConfig.from_dict({**TINY, "mid_attention": True}))
    assert not isinstance(with_attn.unet.middle_block.attention, nn.Identity)
    assert with_attn.unet.middle_block.attention.attn.use_flash_attention is False  # 8^3 tokens: small
    big = ScoreNet(2, (48, 48, 48), NetworkConfig.from_dict({**TINY, "mid_attention": True}))
    assert big.unet.middle_block.attention.attn.use_flash_attention is True  # 24^3 tokens
    x = torch.randn(2, 2, 16, 16, 16)
    assert _perturbed(with_attn)(x, torch.tensor([0.2, 0.4])).shape == x.shape
