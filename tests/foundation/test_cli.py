"""The app itself: version, help with examples, config show/validate, inspect errors, exit codes."""

import json

import yaml
from typer.testing import CliRunner

from medgen_cli import __version__
from medgen_cli.cli import app
from medgen_cli.settings import STEP_SETTINGS, PreprocessSettings, validate_settings

runner = CliRunner()


def test_version_and_help():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and __version__ in res.output
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0 and "preprocess" in res.output and "inspect" in res.output


def test_every_command_has_an_example():
    commands = [["preprocess"], ["inspect"], ["config", "show"], ["config", "validate"], ["train-ae"], ["evaluate"], ["export"], ["encode-latents"], ["train-prior"], ["sample"]]
    for cmd in commands:
        res = runner.invoke(app, [*cmd, "--help"], terminal_width=200)
        assert res.exit_code == 0, cmd
        assert "Example: medgen" in res.output, cmd


def test_config_show_prints_valid_commented_defaults():
    for step, model in STEP_SETTINGS.items():
        res = runner.invoke(app, ["config", "show", step])
        assert res.exit_code == 0, step
        assert res.output.lstrip().startswith("#")
        assert validate_settings(model, yaml.safe_load(res.output)) == model()


def test_config_show_resolves_overrides_and_validate(tmp_path):
    res = runner.invoke(app, ["config", "show", "preprocess", "--set", "geometry.spacing=1.5"])
    f = tmp_path / "p.yaml"
    f.write_text(res.output)
    assert validate_settings(PreprocessSettings, yaml.safe_load(res.output)).geometry.spacing == (1.5,)
    ok = runner.invoke(app, ["config", "validate", str(f), "--step", "preprocess"])
    assert ok.exit_code == 0 and "valid" in ok.output
    f.write_text("geometry:\n  spacing: -1\n")
    bad = runner.invoke(app, ["config", "validate", str(f), "--step", "preprocess"])
    assert bad.exit_code == 2 and "geometry.spacing" in bad.output
    unknown = runner.invoke(app, ["config", "show", "nostep"])
    assert unknown.exit_code == 2 and "unknown step 'nostep'" in unknown.output


def test_inspect_errors_are_one_sentence_with_exit_2(tmp_path):
    res = runner.invoke(app, ["inspect", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "does not exist" in res.output and "Traceback" not in res.output
    (tmp_path / "plain").mkdir()
    res = runner.invoke(app, ["inspect", str(tmp_path / "plain"), "--json"])
    assert res.exit_code == 2 and "not a medgen artefact" in res.output


def test_inspect_json_of_an_artefact(tmp_path):
    from medgen_cli.artefacts import ArtefactWriter

    w = ArtefactWriter(tmp_path / "a", "preprocessed", {"mode": {"kind": "slices"}})
    w.open()
    w.commit({"inputs": 3})
    report = json.loads(runner.invoke(app, ["inspect", str(tmp_path / "a"), "--json"]).output)
    assert report["kind"] == "preprocessed" and report["status"] == "complete"
    assert report["key_settings"] == {"mode.kind": "slices"} and report["summary"] == {"inputs": 3}


# --------------------------------------------------------------- exit codes (issue 11, part E)
import errno  # noqa: E402

import pytest  # noqa: E402

from medgen_cli.errors import StepFailed, UsageError, os_error_sentence  # noqa: E402

COMMANDS = {  # step module -> the shortest command line that reaches its run()
    "preprocess": ["preprocess", "scan.nii.gz", "--out", "o"],
    "train_ae": ["train-ae", "--data", "d", "--out", "o"],
    "encode_latents": ["encode-latents", "--ae", "a", "--data", "d", "--out", "o"],
    "train_prior": ["train-prior", "--latents", "l", "--out", "o"],
    "sample": ["sample", "--prior", "p", "--out", "o"],
    "evaluate": ["evaluate", "--ae", "a", "--data", "d", "--out", "o"],
    "export": ["export", "src", "--out", "o"],
    "inspect": ["inspect", "a"],
}
FAILURES = [
    (UsageError("bad input a/: not an artefact"), 2, "bad input a/: not an artefact"),
    (StepFailed("3 input(s) failed"), 1, "3 input(s) failed"),
    (OSError(errno.ENOSPC, "No space left on device", "o.partial/x.zarr"), 1, "could not write o.partial/x.zarr: the disk is full"),
    (PermissionError(errno.EACCES, "Permission denied", "o.partial"), 1, "permission denied on o.partial"),
    (MemoryError(), 1, "out of memory; lower the batch size"),
    (KeyError("item07"), 1, "KeyError: 'item07' (re-run with -v for the traceback)"),
]


@pytest.mark.parametrize("module", list(COMMANDS))
@pytest.mark.parametrize("error,code,phrase", FAILURES, ids=[type(e).__name__ for e, _, _ in FAILURES])
def test_every_command_maps_errors_to_the_documented_exit_code(monkeypatch, tmp_path, module, error, code, phrase):
    """README: 2 = usage/settings/input artefact, 1 = the step failed; one sentence, never a traceback."""
    import importlib

    step = importlib.import_module(f"medgen_cli.steps.{module}")

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(step, "run", fail)
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, COMMANDS[module], terminal_width=400)
    out = " ".join(res.output.split())
    assert res.exit_code == code, (module, res.output)
    assert "Traceback" not in res.output and isinstance(res.exception, SystemExit)
    assert f"error: {phrase}" in out, out
    assert out.count("error:") == 1


def test_os_error_sentences():
    assert os_error_sentence(OSError(errno.EROFS, "Read-only file system", "/mnt/x")) == \
        "/mnt/x is on a read-only file system; choose another --out"
    assert os_error_sentence(FileNotFoundError(errno.ENOENT, "No such file", "a.nii")) == "a.nii does not exist; check the path"
    assert os_error_sentence(OSError(errno.EIO, "Input/output error", "a.zarr")) == "Input/output error: a.zarr"


def test_usage_errors_of_flags_are_exit_2(tmp_path):
    for args, phrase in ((["preprocess", "x", "--out", "o", "--shard", "2/2"], "--shard '2/2' needs 0 <= I < N"),
                         (["preprocess", "x", "--out", "o", "--shard", "a/b"], "must look like I/N"),
                         (["train-ae", "--data", "d", "--out", "o", "--steps", "0"], "'train.steps' = 0")):
        res = runner.invoke(app, args, terminal_width=400)
        assert res.exit_code == 2 and phrase in " ".join(res.output.split()), res.output


def test_inspect_check_verifies_every_chunk(tmp_path):
    """`medgen inspect DIR --check`: exit 0 on an intact store; a deleted chunk is exit 1 naming the item."""
    from tests.faults.conftest import snapshot
    from tests.train.helpers import make_prep

    prep = make_prep(tmp_path / "prep", 2, n_train=2, n_val=1)
    ok = runner.invoke(app, ["inspect", str(prep), "--check"], terminal_width=400)
    assert ok.exit_code == 0 and "3 item(s)" in ok.output and "no damage found" in ok.output, ok.output
    report = json.loads(runner.invoke(app, ["inspect", str(prep), "--check", "--json"]).stdout)
    assert report["check"]["damaged"] == [] and report["check"]["items"] == 3
    (prep / "main.zarr" / "items" / "item01" / "c" / "0" / "0").unlink()
    before = snapshot(prep)
    bad = runner.invoke(app, ["inspect", str(prep), "--check"], terminal_width=400)
    out = " ".join(bad.output.split())
    assert bad.exit_code == 1 and "Traceback" not in bad.output, bad.output
    assert "error:" in out and "item01" in out and "damaged" in out, out
    assert snapshot(prep) == before  # checking never changes the artefact
