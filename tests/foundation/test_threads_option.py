"""`--threads N` on every step: it reaches ``runtime.threads`` of the step's settings, and preprocess
applies it to SimpleITK and torch (issue 13: a step that stays steady on a shared machine)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from typer.testing import CliRunner

from medgen_cli.cli import app
from tests.conftest import sphere_phantom, write_nifti

runner = CliRunner()

# step -> (module in medgen_cli.steps, arguments that get past option parsing)
STEPS = {
    "train-ae": ("train_ae", ["--data", "d", "--out", "o"]),
    "encode-latents": ("encode_latents", ["--ae", "a", "--data", "d", "--out", "o"]),
    "train-prior": ("train_prior", ["--latents", "l", "--out", "o"]),
    "sample": ("sample", ["--prior", "p", "--out", "o"]),
    "evaluate": ("evaluate", ["--ae", "a", "--data", "d", "--out", "o"]),
    "export": ("export", ["src", "--out", "o"]),
}


class _Seen(Exception):
    pass


@pytest.mark.parametrize("step", sorted(STEPS))
def test_threads_flag_reaches_the_step_settings(step, monkeypatch):
    module, args = STEPS[step]
    seen = {}

    def fake_run(settings, out, **kwargs):
        seen["threads"] = settings.runtime.threads
        raise _Seen

    monkeypatch.setattr(importlib.import_module(f"medgen_cli.steps.{module}"), "run", fake_run)
    runner.invoke(app, [step, *args, "--threads", "1"])
    assert seen == {"threads": 1}, step
    seen.clear()
    runner.invoke(app, [step, *args])
    assert seen == {"threads": 0}, step  # the default: torch's own choice


@pytest.mark.parametrize("step", ["preprocess", *sorted(STEPS)])
def test_threads_is_in_every_steps_help_and_rejects_negatives(step):
    res = runner.invoke(app, [step, "--help"], terminal_width=300)
    assert res.exit_code == 0 and "--threads" in res.output
    args = ["x", "--out", "o"] if step in ("preprocess", "export") else ["--out", "o"]
    bad = runner.invoke(app, [step, *args, "--threads", "-1"], terminal_width=300)
    assert bad.exit_code == 2 and "Traceback" not in bad.output


def test_preprocess_applies_threads_to_simpleitk_and_torch(tmp_path):
    img = write_nifti(tmp_path / "a.nii.gz", sphere_phantom(), np.diag([1.0, 1.0, 2.0, 1.0]))
    before = (sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(), torch.get_num_threads())
    try:
        res = runner.invoke(app, ["preprocess", str(img), "--out", str(tmp_path / "prep"), "--threads", "1"])
        assert res.exit_code == 0, res.output
        assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == 1
        assert torch.get_num_threads() == 1
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before[0])
        torch.set_num_threads(before[1])
