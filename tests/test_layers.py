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
    empty = write(tmp_path / "empty.yaml", "")
    assert read_yaml(empty) == {} and load_config(empty).name == "empty"
