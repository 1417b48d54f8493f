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


# ------------------------------------------------------------------ safe reading (issue 11, part E)
from pydantic import Field  # noqa: E402

from medgen_cli.settings.base import (  # noqa: E402
    MAX_SHOWN,
    FloatTuple,
    IntTuple,
    OptionalText,
    PerLevelInts,
    Section,
    expanded_size,
    read_settings_file,
    shown,
)


class Toy(Section):
    channels: PerLevelInts = Field((64, 128))
    blocks: IntTuple = Field((2,))
    betas: FloatTuple = Field((0.9, 0.999))
    val_split: OptionalText = "val"
    store: str = "main"
    steps: int = 10


def test_expanded_size_counts_shared_parts_per_use_and_stops_early():
    leaf = [1] * 9
    level = leaf
    for _ in range(12):  # 9**13 values if expanded, ~100 objects in memory
        level = [level] * 9
    assert expanded_size([1, {"a": 2, "b": [3, 4]}]) == 9  # 2 lists + 1 dict + 4 scalars + 2 keys
    assert expanded_size(leaf) == 10
    assert expanded_size([leaf, leaf]) == 21  # a shared list counts once per use
    import time
    start = time.perf_counter()
    with pytest.raises(ValueError, match="more than 1,000 values"):
        expanded_size({"x": level}, limit=1000)
    with pytest.raises(ValueError, match="more than"):
        expanded_size({"x": level})
    assert time.perf_counter() - start < 0.5
    loop = []
    loop.append(loop)
    with pytest.raises(ValueError, match="refers to the value that contains it"):
        expanded_size({"a": loop})
    deep = []
    for _ in range(100_000):  # deeper than Python's recursion limit: the walk is iterative
        deep = [deep]
    assert expanded_size(deep, limit=10**6) == 100_001


def test_shown_caps_what_an_error_echoes():
    assert shown("abc") == "'abc'"
    assert len(shown("x" * 10**6)) <= MAX_SHOWN + 3 and "..." in shown("x" * 10**6)
    big = list(range(10**6))
    assert len(shown(big)) <= MAX_SHOWN + 3
    with pytest.raises(SettingsError) as err:
        load_settings(Toy, None, [f"store={'y' * 10**5}", "steps=" + "[1]" * 1])
    assert len(str(err.value)) < 400


def test_per_level_list_refuses_one_number_and_plain_lists_broadcast():
    with pytest.raises(SettingsError) as err:
        load_settings(Toy, None, ["channels=16"])
    assert ("'channels' = 16: takes one value per level as a list, e.g. [64, 128]; a single number would silently "
            "build a one-level network (write [16] if that is meant) (allowed: a list of integers, one per level)") in str(err.value)
    for text in ("channels='16'", "channels=16.0"):
        with pytest.raises(SettingsError, match="one value per level"):
            load_settings(Toy, None, [text])
    assert load_settings(Toy, None, ["channels=[16]"]).channels == (16,)
    assert load_settings(Toy, None, ["channels=16,32"]).channels == (16, 32)
    assert load_settings(Toy, None, ["channels=16x32"]).channels == (16, 32)
    assert load_settings(Toy, None, ["blocks=3"]).blocks == (3,)  # documented broadcast: every level
    from medgen_cli.settings import TrainAESettings

    with pytest.raises(SettingsError, match="two numbers in"):  # a fixed-length list refuses one value by its own rule
        load_settings(TrainAESettings, None, ["optim.betas=0.9"])


def test_empty_value_means_none_or_is_an_error_naming_the_key(tmp_path):
    assert load_settings(Toy, None, ["val_split="]).val_split is None
    assert load_settings(Toy, None, ["val_split=''"]).val_split is None
    assert load_settings(Toy, None, ["val_split=val"]).val_split == "val"
    f = tmp_path / "s.yaml"
    f.write_text("val_split: null\n")
    assert load_settings(Toy, f).val_split is None
    for text, key in (("store=", "store"), ("steps=", "steps"), ("blocks=", "blocks")):
        with pytest.raises(SettingsError, match=f"'{key}' is empty, but it needs a value"):
            load_settings(Toy, None, [text])


def test_numbers_are_finite_and_fit_in_64_bits():
    for text, phrase in (("steps=9223372036854775808", "'steps' = 9223372036854775808: out of range"),
                         ("steps=-9223372036854775808", "out of range"),
                         ("betas=[0.9, .inf]", "finite number"), ("blocks=[1, 99999999999999999999]", "'blocks' = 99999999999999999999")):
        with pytest.raises(SettingsError, match=phrase.replace("[", r"\[")):
            load_settings(Toy, None, [text])
    assert load_settings(Toy, None, ["steps=9223372036854775807"]).steps == 2**63 - 1


def test_file_reading_is_safe(tmp_path):
    f = tmp_path / "dup.yaml"
    f.write_text("steps: 1\nblocks: [1]\nsteps: 2\n")
    with pytest.raises(SettingsError, match="duplicate key 'steps' at line 3"):
        read_settings_file(f)
    f.write_text("base: &b {steps: 1, store: a}\nmerged:\n  <<: *b\n  steps: 2\n")  # merge keys may repeat keys
    assert read_settings_file(f)["merged"] == {"steps": 2, "store": "a"}
    f.write_bytes("store: caf\xe9\n".encode("latin-1"))
    with pytest.raises(SettingsError, match=r"is not UTF-8 text \(byte 0xe9 at offset 10\); save it as UTF-8"):
        read_settings_file(f)
    f.write_bytes("\ufeffsteps: 3\n".encode())
    assert read_settings_file(f) == {"steps": 3}
    with pytest.raises(SettingsError, match="is not a file"):
        read_settings_file(tmp_path)


def test_example_configs_never_choose_weights_on_the_test_split():
    """Examples 01-05 validated (and chose checkpoints) on the held-out test subject (issue 11)."""
    from pathlib import Path

    from medgen_cli.settings import TrainAESettings, TrainPriorSettings

    examples = Path(__file__).resolve().parents[2] / "examples"
    configs = sorted(examples.glob("*/*.yaml"))
    assert len(configs) >= 13
    for path in configs:
        tree = read_settings_file(path)
        model = TrainPriorSettings if "prior" in tree or "diffusion" in tree else TrainAESettings
        s = validate_settings(model, tree)
        assert s.data.val_split != "test", f"{path}: validation on the test split"
        splits = tree.get("data", {})
        assert splits.get("train_split", "train") != "test", path
