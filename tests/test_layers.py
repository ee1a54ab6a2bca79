"""nextpoi_lib.layers: parameter files, `extends`, inline sections, profiles and overrides merged to one mapping."""
import pytest
import yaml

from nextpoi_lib.config import ConfigError
from nextpoi_lib.experiment import load_config
from nextpoi_lib.layers import PARAMETERS_DIR, PROFILES_DIR, deep_merge, read_yaml, resolve_layers, resolve_profile

CPU_PROFILE = yaml.safe_load((PROFILES_DIR / "cpu.yaml").read_text())


def write(path, text):
    path.write_text(text)
    return path


def test_deep_merge_merges_sections_and_copies():
    base = {"model": {"name": "gru", "hidden_dim": 32}, "training": {"seeds": [0]}}
    override = {"model": {"hidden_dim": 64}, "training": {"seeds": [1, 2]}, "name": "x"}
    merged = deep_merge(base, override)
    assert merged == {"model": {"name": "gru", "hidden_dim": 64}, "training": {"seeds": [1, 2]}, "name": "x"}
    merged["training"]["seeds"].append(3)
    merged["model"]["name"] = "lstm"
    # Neither input is changed, and the result shares no list or section with them.
    assert base == {"model": {"name": "gru", "hidden_dim": 32}, "training": {"seeds": [0]}}
    assert override["training"]["seeds"] == [1, 2]


def test_layers_merge_left_to_right(tmp_path):
    first = write(tmp_path / "first.yaml", "model: {name: gru, hidden_dim: 32}\ntraining: {epochs: 7}\n")
    second = write(tmp_path / "second.yaml", "model: {hidden_dim: 64}\n")
    config = load_config(first, second)
    assert config.model.name == "gru" and config.model.hidden_dim == 64 and config.training.epochs == 7
    assert config.name == "second"
    # Dicts are layers too, and never name the run.
    config = load_config(first, {"training": {"epochs": 9}})
    assert config.training.epochs == 9 and config.name == "first"
    assert load_config({"model": {"name": "gru"}}).name == "experiment"  # the default name
    # A name written in a file wins over the file's stem.
    named = write(tmp_path / "third.yaml", "name: chosen\n")
    assert load_config(named, second).name == "chosen"


def test_extends_in_a_file_is_relative_to_it(tmp_path):
    (tmp_path / "bases").mkdir()
    write(tmp_path / "bases" / "base.yaml", "model: {name: gru, hidden_dim: 32, num_layers: 3}\n")
    write(tmp_path / "bases" / "other.yaml", "model: {num_layers: 2}\ntraining: {epochs: 4}\n")
    child = write(tmp_path / "child.yaml", "extends: [bases/base.yaml, bases/other.yaml]\nmodel: {hidden_dim: 48}\n")
    assert read_yaml(child) == {"model": {"name": "gru", "hidden_dim": 48, "num_layers": 2}, "training": {"epochs": 4}}
    config = load_config(child)
    assert config.name == "child" and (config.model.hidden_dim, config.model.num_layers) == (48, 2)
    single = write(tmp_path / "single.yaml", "extends: bases/base.yaml\n")
    assert read_yaml(single)["model"]["num_layers"] == 3


@pytest.mark.filterwarnings("ignore:optimizer.learning_rate=.*has no effect")  # the shipped A and baseline
def test_the_shipped_a_extends_the_baseline():
    baseline = yaml.safe_load((PARAMETERS_DIR / "baseline.yaml").read_text())
    a = yaml.safe_load((PARAMETERS_DIR / "A.yaml").read_text())
    assert a["extends"] == "baseline.yaml"
    config = load_config(PARAMETERS_DIR / "A.yaml")
    assert config.training.epochs == baseline["training"]["epochs"]  # inherited
    assert config.model.num_layers == a["model"]["num_layers"]  # overridden


@pytest.mark.filterwarnings("ignore:optimizer.learning_rate=.*has no effect")  # the shipped A and baseline
def test_extends_argument_and_sections_never_name_the_run(tmp_path):
    experiment = write(tmp_path / "mine.yaml", "training: {epochs: 3}\nmodel: {num_layers: 1}\n")
    base = write(tmp_path / "base.yaml", "training: {epochs: 11}\nmodel: {dropout: 0.2, hidden_dim: 40}\n")
    config = load_config(experiment, extends=base, sections={"model": {"dropout": 0.3}})
    assert config.name == "mine"
    # extends comes after the files, sections after extends.
    assert config.training.epochs == 11 and config.model.dropout == 0.3
    assert (config.model.num_layers, config.model.hidden_dim) == (1, 40)
    assert load_config(extends=str(base)).name == "experiment"
    assert load_config(sections={"training": {"epochs": 2}}).name == "experiment"
    resolved = resolve_layers(experiment, extends=base, sections={"model": {}})
    assert resolved.sources == (str(experiment), f"extends {base}", "sections (model)")
    # Names are relative to parameters/; a `name:` written inside an extended file is merged like any key.
    baseline = yaml.safe_load((PARAMETERS_DIR / "baseline.yaml").read_text())
    shipped = load_config(experiment, extends="baseline.yaml")
    assert shipped.name == baseline["name"] and shipped.training.epochs == baseline["training"]["epochs"]
    both = load_config(extends=["baseline.yaml", "A.yaml"])
    assert both.name == "A" and both.model.num_layers == yaml.safe_load((PARAMETERS_DIR / "A.yaml").read_text())[
        "model"]["num_layers"]


@pytest.mark.parametrize("profile, gpu_visible, expected", [
    ("cpu", None, "cpu"), ("gpu", None, "gpu"), ("auto", True, "gpu"), ("auto", False, "cpu"),
])
def test_profiles_by_name_and_auto(profile, gpu_visible, expected, tmp_path):
    experiment = write(tmp_path / "exp.yaml", "model: {name: gru}\ntraining: {epochs: 50, seeds: [0, 1, 2]}\n")
    config = load_config(experiment, profile=profile, gpu_visible=gpu_visible)
    assert config.profile == expected and config.name == "exp"
    assert resolve_profile(profile, gpu_visible=gpu_visible).name == f"{expected}.yaml"
    if expected == "cpu":  # the CPU profile's values win over the experiment's
        assert config.training.epochs == CPU_PROFILE["training"]["epochs"]
        assert config.windows.stride == CPU_PROFILE["windows"]["stride"]
        assert config.training.seeds == CPU_PROFILE["training"]["seeds"]
        assert config.embeddings.epochs == CPU_PROFILE["embeddings"]["epochs"]
    else:  # full settings: the experiment as written
        assert config.training.epochs == 50 and config.training.seeds == [0, 1, 2]


def test_no_profile_records_none(tmp_path):
    assert load_config({}).profile is None and resolve_profile(None) is None and resolve_profile("") is None


def test_a_profile_by_path_and_overrides_after_it(tmp_path):
    laptop = write(tmp_path / "laptop.yaml", "training: {epochs: 2, batch_size: 32}\n")
    experiment = write(tmp_path / "exp.yaml", "training: {epochs: 50}\nmodel: {name: gru}\n")
    config = load_config(experiment, profile=laptop, overrides={"training": {"batch_size": 16}})
    assert config.profile == "laptop" and config.name == "exp"
    assert config.training.epochs == 2 and config.training.batch_size == 16  # overrides win over the profile
    # The profile comes after the inline sections too.
    config = load_config(experiment, sections={"training": {"epochs": 7}}, profile=str(laptop))
    assert config.training.epochs == 2


def test_a_profile_given_among_the_files_keeps_the_experiments_name():
    config = load_config(PARAMETERS_DIR / "smoke.yaml", PROFILES_DIR / "cpu.yaml")
    assert config.name == "smoke" and config.profile == "cpu"
    assert config.training.epochs == CPU_PROFILE["training"]["epochs"]


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"Profile 'tpu' does not exist.*'auto', or one of: cpu, cpu-results, gpu"):
        load_config({}, profile="tpu")
    with pytest.raises(ConfigError, match=r"Profile 'missing/laptop.yaml' does not exist"):
        load_config({}, profile="missing/laptop.yaml")


def test_bad_files_are_explained(tmp_path):
    with pytest.raises(ConfigError, match=r"Parameter file '.*absent\.yaml' does not exist\. Check the path"):
        read_yaml(tmp_path / "absent.yaml")
    broken = write(tmp_path / "broken.yaml", "model: {name: gru\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml' is not valid YAML"):
        read_yaml(broken)
    listed = write(tmp_path / "listed.yaml", "- model\n- training\n")
    with pytest.raises(ConfigError, match=r"must hold a mapping of sections .* not a list"):
        read_yaml(listed)
    for text in ("", "# only a comment\n\n", "{}\n"):
        empty = write(tmp_path / "empty.yaml", text)
        with pytest.raises(ConfigError, match=r"empty\.yaml' holds no settings.*library defaults.*`extends:`"):
            load_config(empty)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_file_that_only_extends_and_empty_profiles_load(tmp_path):
    write(tmp_path / "base.yaml", "training: {epochs: 3}\n")
    only = write(tmp_path / "only.yaml", "extends: base.yaml\n")
    assert load_config(only).training.epochs == 3 and load_config(only).name == "only"
    # Profiles may be empty (parameters/profiles/gpu.yaml is, on purpose), by name, by path or among the files.
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    empty_profile = write(profiles / "quiet.yaml", "# nothing to change\n")
    assert load_config(only, profile=empty_profile).profile == "quiet"
    assert load_config(only, empty_profile).name == "only"
    elsewhere = write(tmp_path / "laptop.yaml", "")
    assert load_config(only, profile=elsewhere).profile == "laptop"
    assert load_config(PARAMETERS_DIR / "baseline.yaml", profile="gpu").profile == "gpu"


@pytest.mark.parametrize("text, key, line, first", [
    ("training: {epochs: 3}\nmodel: {name: gru}\ntraining: {batch_size: 8}\n", "'training'", 3, 1),
    ("training:\n  epochs: 3\n  batch_size: 8\n  epochs: 4\n", "'training.epochs'", 4, 2),
    ("model:\n  name: gru\nloss: {name: focal, name: focal}\n", "'loss.name'", 3, 3),
])
def test_a_key_given_twice_names_the_file_line_and_key(tmp_path, text, key, line, first):
    path = write(tmp_path / "twice.yaml", text)
    with pytest.raises(ConfigError, match=rf"twice\.yaml', line {line}: the key {key} is given twice in one mapping "
                                          rf"\(first on line {first}\).*merge the two"):
        read_yaml(path)


def test_the_same_key_in_different_sections_and_merge_keys_are_fine(tmp_path):
    path = write(tmp_path / "fine.yaml", "model: {name: gru}\nloss: {name: focal}\n"
                                          "base: &base {epochs: 3, batch_size: 8}\n")
    assert read_yaml(path)["loss"] == {"name": "focal"}
    merged = write(tmp_path / "merged.yaml", "a: &a {epochs: 3, batch_size: 8}\ntraining: {<<: *a, epochs: 4}\n")
    assert read_yaml(merged)["training"] == {"epochs": 4, "batch_size": 8}


def test_extends_cycles_name_the_chain(tmp_path):
    write(tmp_path / "a.yaml", "extends: b.yaml\ntraining: {epochs: 3}\n")
    write(tmp_path / "b.yaml", "extends: a.yaml\ntraining: {epochs: 4}\n")
    with pytest.raises(ConfigError, match=r"cycle: .*a\.yaml extends .*b\.yaml extends .*a\.yaml\. Remove one"):
        load_config(tmp_path / "a.yaml")
    write(tmp_path / "self.yaml", "extends: self.yaml\nmodel: {name: gru}\n")
    with pytest.raises(ConfigError, match=r"cycle: .*self\.yaml extends .*self\.yaml\."):
        load_config(tmp_path / "self.yaml")
    # Two files extending one base (a diamond) is no cycle.
    write(tmp_path / "root.yaml", "training: {epochs: 2}\n")
    write(tmp_path / "left.yaml", "extends: root.yaml\nmodel: {name: gru}\n")
    write(tmp_path / "right.yaml", "extends: root.yaml\nloss: {name: focal}\n")
    both = write(tmp_path / "both.yaml", "extends: [left.yaml, right.yaml]\ntraining: {batch_size: 8}\n")
    assert read_yaml(both) == {"training": {"epochs": 2, "batch_size": 8}, "model": {"name": "gru"},
                               "loss": {"name": "focal"}}


def test_a_missing_extends_names_the_including_file_and_the_resolved_path(tmp_path):
    sub = tmp_path / "experiments"
    sub.mkdir()
    child = write(sub / "child.yaml", "extends: ../bases/base.yaml\nmodel: {name: gru}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(child)
    message = str(caught.value)
    assert str(child) in message and "extends '../bases/base.yaml'" in message
    assert str((tmp_path / "bases" / "base.yaml").resolve()) in message and "not to the current folder" in message
    assert str(sub.resolve()) in message
    bad = write(sub / "bad.yaml", "extends: 3\nmodel: {name: gru}\n")
    with pytest.raises(ConfigError, match=r"extends=3 must be a file name or a list of file names"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"extends='no_such_base\.yaml' names no parameter file.*parameters/"):
        load_config({}, extends="no_such_base.yaml")
