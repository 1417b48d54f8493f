"""The bf16 fast path: auto picks bf16 on CPUs with native bf16 (train-ae), convolutions really run
in bf16, quantiser distances and losses in fp32, weights stay fp32; fp32 turns it off; channels_last."""

import copy

import pytest
import torch

from medgen_cli.models import build_autoencoder
from medgen_cli.models.quantizers import VectorQuantizer
from medgen_cli.settings.train import OptimSettings, TrainSettings
from medgen_cli.train.ae_task import AutoencoderTask
from medgen_cli.train.loop import Trainer
from medgen_cli.train.losses import ReconstructionLoss
from medgen_cli.train.precision import (
    channels_last_format, cpu_bf16_flags, native_bf16, resolve_precision, set_threads, use_channels_last,
)

from .helpers import blob

CPU = torch.device("cpu")


def _model(kind="vqvae", spatial_dims=2):
    torch.manual_seed(0)
    extra = {"latent_channels": 4} if kind == "klvae" else {"embedding_dim": 8, "num_embeddings": 16}
    return build_autoencoder(kind, spatial_dims, channels=(8, 8), num_res_blocks=1, layout="strided", **extra)


def _batch(spatial_dims=2):
    return {"image": torch.stack([torch.from_numpy(blob(spatial_dims, 16, s))[None] for s in range(2)])}


def test_cpu_bf16_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile amx_bf16\n")
    cpu_bf16_flags.cache_clear()
    try:
        assert cpu_bf16_flags(str(info)) == ("amx_bf16", "avx512_bf16")
        info.write_text("flags\t\t: fpu sse avx2\n")
        cpu_bf16_flags.cache_clear()
        assert cpu_bf16_flags(str(info)) == ()
        assert cpu_bf16_flags(str(tmp_path / "missing")) == ()
    finally:
        cpu_bf16_flags.cache_clear()


def test_auto_precision_on_cpu(monkeypatch):
    monkeypatch.setenv("MEDGEN_CPU_BF16", "1")
    assert native_bf16(CPU)
    assert resolve_precision("auto", CPU, cpu_bf16=True).name == "bf16"
    assert resolve_precision("auto", CPU).name == "fp32"  # callers that did not opt in (priors) keep fp32
    assert resolve_precision("fp32", CPU, cpu_bf16=True).name == "fp32"
    monkeypatch.setenv("MEDGEN_CPU_BF16", "0")
    assert resolve_precision("auto", CPU, cpu_bf16=True).name == "fp32"
    monkeypatch.delenv("MEDGEN_CPU_BF16")
    assert native_bf16(CPU) == bool(cpu_bf16_flags())  # this machine's own answer


def _conv_dtypes(model, precision, x):
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
             for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]
    distances = []
    original = VectorQuantizer._nearest

    def spy(self, flat):
        distances.append((flat.dtype, self.embedding.dtype, torch.is_autocast_enabled("cpu")))
        return original(self, flat)

    VectorQuantizer._nearest = spy
    try:
        with precision.autocast():
            out = model(x)
    finally:
        VectorQuantizer._nearest = original
        for h in hooks:
            h.remove()
    return seen, distances, out


@pytest.mark.parametrize("setting, expected", [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_convolutions_run_in_bf16_and_quantisation_in_fp32(setting, expected, monkeypatch):
    monkeypatch.setenv("MEDGEN_CPU_BF16", "1")
    precision = resolve_precision("auto" if setting == "bf16" else "fp32", CPU, cpu_bf16=True)
    model = _model()
    convs, distances, out = _conv_dtypes(model, precision, _batch()["image"])
    assert convs and all(d == expected for d in convs)
    assert distances and all(d == (torch.float32, torch.float32, False) for d in distances)  # VQ in fp32, autocast off
    assert out.loss_terms["commitment"].dtype == torch.float32 and out.reconstruction.dtype == expected
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast never casts the weights


@pytest.mark.parametrize("kind, spatial_dims", [("vqvae", 2), ("klvae", 3)])
def test_bf16_training_step_is_close_to_fp32_and_keeps_fp32_state(tmp_path, kind, spatial_dims):
    batch = _batch(spatial_dims)
    losses, weights = {}, {}
    for name in ("fp32", "bf16"):
        model = _model(kind, spatial_dims)
        (tmp_path / name).mkdir()
        task = AutoencoderTask(model, lambda epoch, start: [batch] * (2 - start), ReconstructionLoss(spatial_dims, ms_ssim=0.5),
                               CPU)
        trainer = Trainer(task, OptimSettings(lr=1e-3), TrainSettings(steps=1, val_every=0, log_every=1, ema=True),
                          resolve_precision(name, CPU), tmp_path / name)
        torch.manual_seed(1)  # the same posterior noise for both
        with trainer.precision.autocast():
            out = task.training_step(batch, 0)
        losses[name] = float(out["loss"].detach())
        assert out["loss"].dtype == torch.float32
        trainer.fit()
        weights[name] = copy.deepcopy(model.state_dict())
        state = trainer.state_dict()
        floats = [t for t in state["modules"]["model"].values() if t.is_floating_point()]
        floats += [t for t in state["ema"]["weights"].values() if t.is_floating_point()]
        floats += [s["exp_avg"] for s in state["optimizers"]["model"]["state"].values()]
        assert floats and all(t.dtype == torch.float32 for t in floats)
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=2e-2)
    assert any(not torch.equal(weights["fp32"][k], weights["bf16"][k]) for k in weights["fp32"])  # bf16 really ran


def test_channels_last_setting_and_equivalence():
    bf16 = resolve_precision("bf16", CPU)
    assert not use_channels_last(None, bf16) and use_channels_last(True, bf16) and not use_channels_last(False, bf16)
    assert use_channels_last(None, resolve_precision("bf16", torch.device("cuda"))) if torch.cuda.is_available() else True
    assert channels_last_format(3) is torch.channels_last_3d
    with pytest.raises(ValueError, match="channels_last='yes'"):
        use_channels_last("yes", bf16)
    model, x = _model(), _batch()["image"]
    fast = copy.deepcopy(model).to(memory_format=torch.channels_last)
    assert fast.encoder.stem.op.conv.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast.eval()(x.contiguous(memory_format=torch.channels_last)).reconstruction,
                               model.eval()(x).reconstruction, atol=1e-5, rtol=1e-4)
    assert fast.state_dict().keys() == model.state_dict().keys()


def test_set_threads():
    before = torch.get_num_threads()
    try:
        assert set_threads(0) == before
        assert set_threads(1) == 1
        with pytest.raises(ValueError, match="threads=-1"):
            set_threads(-1)
    finally:
        torch.set_num_threads(before)

