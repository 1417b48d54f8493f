"""ResBlock options as one frozen object: the same block as keyword options, unknown options refused."""

import pytest
import torch

from medgen_cli.nn import ResBlock, ResBlockOptions
from medgen_cli.train.ae_task import AETaskConfig


def test_options_object_and_keywords_build_the_same_block():
    options = ResBlockOptions(num_groups=4, dropout=0.1, rezero=True, scale_shift=True, kernels=(3, 1))
    torch.manual_seed(0)
    a = ResBlock(2, 4, 8, emb_channels=6, options=options)
    torch.manual_seed(0)
    b = ResBlock(2, 4, 8, emb_channels=6, num_groups=4, dropout=0.1, rezero=True, scale_shift=True, kernels=(3, 1))
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    x, emb = torch.randn(2, 4, 8, 8), torch.randn(2, 6)
    a.eval(), b.eval()
    torch.testing.assert_close(a(x, emb), b(x, emb))
    assert ResBlock(2, 8, options=options, num_groups=2).norm1.num_groups == 2  # a keyword replaces one option
    with pytest.raises(TypeError, match="num_grups"):
        ResBlock(2, 8, num_grups=2)


def test_ae_task_config_checks_the_adversarial_loss():
    with pytest.raises(ValueError, match="adversarial_loss='wgan' must be one of"):
        AETaskConfig(adversarial_loss="wgan")
