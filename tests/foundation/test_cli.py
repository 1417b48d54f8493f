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
