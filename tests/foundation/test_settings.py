"""Settings: sources in order, typed --set, strict keys, clear errors, YAML round trip."""

import json

import pytest
import yaml

from medgen_cli.settings import PreprocessSettings, SettingsError, load_settings, settings_to_yaml, validate_settings


def test_defaults_then_file_then_set_then_flags(tmp_path):
    cfg = tmp_path / "prep.yaml"
    cfg.write_text("geometry:\n  spacing: [2.0]\nintensity:\n  window: lung\nsplit:\n  seed: 3\n")
    s = load_settings(PreprocessSettings, cfg, ["geometry.spacing=1.5", "split.seed=4"], {"split.seed": 5, "mode.kind": None})
    assert s.geometry.spacing == (1.5,)  # --set beats the file
    assert s.split.seed == 5  # a flag beats --set
    assert s.intensity.window == "lung"  # from the file
    assert s.mode.kind == "volume"  # None flags are skipped: default stays


@pytest.mark.parametrize("suffix,text", [
    (".json", json.dumps({"mode": {"kind": "slices"}})),
    (".toml", "[mode]\nkind = \"slices\"\n"),
    (".yml", "mode: {kind: slices}\n"),
])
def test_file_formats(tmp_path, suffix, text):
    f = tmp_path / f"s{suffix}"
    f.write_text(text)
    assert load_settings(PreprocessSettings, f).mode.kind == "slices"


def test_set_values_are_typed_by_the_model():
    s = load_settings(PreprocessSettings, None, ["geometry.fit=64,64", "store.level=5", "geometry.antialias=false"])
    assert s.geometry.fit == (64, 64) and s.store.level == 5 and s.geometry.antialias is False


@pytest.mark.parametrize("override,expected", [
    ("geometry.spacng=1", "unknown key 'geometry.spacng'; allowed here: orientation, spacing"),
    ("geometry.spacing=abc", "'geometry.spacing' = 'abc'"),
    ("mode.kind=vol", "one of 'volume', 'slices', 'sequence'"),
    ("store.level=12", "'store.level' = 12"),
    ("geometry.orientation=RRA", "one letter from each of L/R, A/P and S/I"),
    ("intensity.window=1,2,3", "centre,width"),
    ("derive.outputs=[blur]", "unknown derived output 'blur'"),
    ("nokey=1", "unknown key 'nokey'; allowed here: input, geometry"),
])
def test_errors_name_key_value_and_allowed(override, expected):
    with pytest.raises(SettingsError) as err:
        load_settings(PreprocessSettings, None, [override])
    assert expected in str(err.value)


def test_cross_field_rules():
    with pytest.raises(SettingsError, match="int16 keeps raw physical values"):
        load_settings(PreprocessSettings, None, ["store.dtype=int16"])
    with pytest.raises(SettingsError, match="exclude each other"):
        load_settings(PreprocessSettings, None, ["geometry.spacing=1", "geometry.fit=64,64"])


def test_bad_files(tmp_path):
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(PreprocessSettings, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("geometry: [unclosed\n")
    with pytest.raises(SettingsError, match="could not be parsed"):
        load_settings(PreprocessSettings, bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(SettingsError, match="mapping"):
        load_settings(PreprocessSettings, lst)
    with pytest.raises(SettingsError, match="key.path=value"):
        load_settings(PreprocessSettings, None, ["novalue"])


def test_commented_yaml_round_trips():
    s = load_settings(PreprocessSettings, None, ["geometry.spacing=1.5,1.5,2", "intensity.window=40,400", "derive.outputs=[drr, 'downsample:2']"])
    text = settings_to_yaml(s)
    assert "# Resample to this spacing in mm" in text  # descriptions become comments
    assert validate_settings(PreprocessSettings, yaml.safe_load(text)) == s
    assert validate_settings(PreprocessSettings, s.model_dump(mode="json")) == s
