import re

import pytest
import yaml

from kvasir_utils import config, profiles
from kvasir_utils.analysis import labels
from kvasir_utils.config import ConfigError
from kvasir_utils.profiles import load_profile


def test_paper_profile_holds_the_papers_protocol():
    cfg = load_profile("paper")
    assert cfg.train.batch_size == 32 and cfg.train.stage1.lr == pytest.approx(1e-4)
    assert (cfg.train.stage1.epochs, cfg.train.stage2.epochs) == (5, 5)
    assert cfg.split.val_fraction == 0.2 and cfg.transforms.image_size == 224
    assert cfg.data.classes == labels.CLASSES and cfg.data.size == 2489312085
    assert cfg.train.models == ["resnet50", "efficientnet_b0"] and not cfg.generated_data


def test_smoke_inherits_paper_and_is_generated():
    cfg = load_profile("smoke")
    assert cfg.generated_data and cfg.train.weights is None
    assert cfg.data.classes == labels.CLASSES and cfg.train.optimizer == "adam"
    assert cfg.run_dir.name == "smoke"


def test_overrides_are_typed_and_applied():
    cfg = load_profile("paper", ["train.stage1.epochs=1", "train.stage2.lr=1e-5", "paths.runs=/tmp/x"])
    assert cfg.train.stage1.epochs == 1 and cfg.train.stage2.lr == pytest.approx(1e-5)
    assert str(cfg.run_dir) == "/tmp/x/paper"


@pytest.mark.parametrize(("override", "message"), [
    ("train.nope=1", "unknown setting 'train.nope'; allowed under train: models, weights"),
    ("train.batch_size=abc", "'train.batch_size' = 'abc' is not valid: Input should be a valid integer"),
    ("runtime.precision=fp16", "'runtime.precision' = 'fp16' is not valid: Input should be 'auto', 'bf16' or 'fp32'"),
    ("runtime.workers=many", "'runtime.workers' = 'many' is not valid: Input should be a valid integer, unable to "
                             "parse string as an integer; or Input should be 'auto'"),
    ("data.synthetic.seeds=1", "unknown setting 'data.synthetic.seeds' (did you mean 'data.synthetic.seed'?); "
                               "allowed under data.synthetic: images_per"),
    ("train.batchsize=4", "unknown setting 'train.batchsize' (did you mean 'train.batch_size'?); allowed under train"),
    ("trian.batch_size=4", "unknown setting 'trian' (did you mean 'train'?); allowed under the top level"),
    ("transforms.mean=[1,2]", "'transforms.mean' = [1, 2] is not valid: List should have at least 3 items"),
    ("split.val_fraction=1.5", "'split.val_fraction' = 1.5 is not valid: Input should be less than 1"),
    ("cache.short_side=100", "at least transforms.image_size (224)"),
    ("novalue", "must look like dotted.key=value"),
    # SET="train.models=[resnet50, efficientnet_b0]": make splits it at the space
    ("train.models=[resnet50,", "override 'train.models=[resnet50,': its value is not YAML (expected the node "
                                "content, but found '<stream end>'). Given in SET, mind that make splits SET at "
                                "spaces: write a list or a mapping without them "
                                "(train.models=[resnet50,efficientnet_b0])"),
])
def test_bad_settings_name_the_key_and_what_is_allowed(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_profile("paper", [override])


def test_unknown_profile_lists_known_ones():
    with pytest.raises(ConfigError, match="unknown profile 'nope'; known profiles: ") as error:
        load_profile("nope")
    assert {"paper", "smoke", "paper-masked"} <= set(str(error.value).split("profiles: ")[1].split(" (")[0].split(", "))


def test_profile_from_a_path_with_base(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: smoke\ntrain:\n  batch_size: 8\n")
    cfg = load_profile(str(path))
    assert cfg.profile == "mine" and cfg.train.batch_size == 8 and cfg.generated_data


def test_a_profile_file_with_the_name_of_a_bundled_profile_is_refused_before_it_shares_its_runs(tmp_path):
    path = tmp_path / "smoke.yaml"
    path.write_text("base: smoke\ndata:\n  url: /srv/mine.zip\n")
    with pytest.raises(ConfigError, match=re.escape(f"the profile file {path} has the name of the study's own "
                                                    "profile smoke (configs/smoke.yaml); a profile's runs and "
                                                    "reports are named by its file name (runs/smoke/)")) as error:
        load_profile(str(path))
    assert str(error.value).endswith("rename the file, e.g. to smoke-mine.yaml")
    other = tmp_path / "paper.yml"  # another spelling of the suffix, the same name
    other.write_text("base: smoke\n")
    with pytest.raises(ConfigError, match=re.escape("has the name of the study's own profile paper")):
        load_profile(str(other))
    path.rename(tmp_path / "smoke-mine.yaml")
    assert load_profile(str(tmp_path / "smoke-mine.yaml")).profile == "smoke-mine"


def test_overriding_the_url_clears_the_official_archives_size_and_mirrors():
    cfg = load_profile("paper", ["data.url=http://127.0.0.1:1/x.zip"])
    assert cfg.data.size is None and cfg.data.sha256 is None and cfg.data.mirrors == []
    kept = load_profile("paper", ["data.url=http://127.0.0.1:1/x.zip", "data.size=10"])
    assert kept.data.size == 10


def test_saved_config_round_trips(tmp_path):
    cfg = load_profile("smoke", ["train.seed=7"])
    path = profiles.save_config(cfg, tmp_path / "config.yaml")
    again = config.validate_config(yaml.safe_load(path.read_text()))
    assert again == cfg


def test_a_saved_config_from_an_older_version_is_read_with_todays_protocol():
    saved = load_profile("smoke").to_dict()
    del saved["runtime"]["deterministic"]
    assert profiles.with_protocol(saved).runtime.deterministic == "auto"
    assert profiles.with_protocol(saved).transforms.image_size == 64  # what it has is kept


def test_the_protocol_is_written_once_in_paper_yaml_and_the_schema_only_types_it(tmp_path):
    sections = [s for s in config.Section.__subclasses__() if s.__module__ == config.__name__]
    assert len(sections) == 14  # Config and its thirteen sections
    with_default = [f"{model.__name__}.{name}" for model in sections for name, field in model.model_fields.items()
                    if not field.is_required()]
    # A default in the schema would be a second copy of paper.yaml; the exceptions are keys paper.yaml
    # cannot give: one of a section it leaves null (data.synthetic), and a weights file's optional hash
    # (an entry of train.weights_files, which is empty in the protocol).
    assert with_default == ["SyntheticConfig.layout", "WeightsFile.sha256"]
    own = tmp_path / "mine.yaml"  # no base: starts from the paper's protocol
    own.write_text("train:\n  batch_size: 8\n")
    mine, paper = load_profile(str(own)), load_profile("paper")
    assert mine.train.batch_size == 8 and mine.train.stage2 == paper.train.stage2 and mine.data == paper.data


def test_on_and_off_are_words_not_yaml_booleans():
    cfg = profiles.load_profile("smoke", ["runtime.compile=on", "runtime.deterministic=off"])
    assert (cfg.runtime.compile, cfg.runtime.deterministic) == ("on", "off")
    with pytest.raises(config.ConfigError, match="runtime.compile"):
        profiles.load_profile("smoke", ["runtime.compile=sometimes"])


GENERATED = "data:\n  url: ''\n  synthetic: {images_per_class: 100, seed: 4, large_fraction: 0.3}\n"


def test_a_profile_of_generated_data_written_before_layout_existed_still_loads(tmp_path):
    (tmp_path / "generated.yaml").write_text(GENERATED)
    cfg = load_profile(str(tmp_path / "generated.yaml"))
    assert cfg.data.synthetic.layout == "kvasir-v2" and cfg.data.synthetic.images_per_class == 100


def test_a_key_missing_under_a_section_paper_yaml_leaves_null_is_the_profiles_to_give(tmp_path):
    (tmp_path / "generated.yaml").write_text(GENERATED.replace("images_per_class: 100, ", ""))
    with pytest.raises(ConfigError) as error:
        load_profile(str(tmp_path / "generated.yaml"))
    message = str(error.value)
    assert message.startswith("setting 'data.synthetic.images_per_class' is missing: configs/paper.yaml leaves "
                              "data.synthetic null (off), so profile 'generated'")
    assert "must give images_per_class (an integer, >= 2)" in message
    assert "layout (kvasir-v2 | hyper-kvasir; default kvasir-v2)" in message
    assert "which must give every setting" not in message  # paper.yaml is not what lacks it


def test_a_section_turned_on_by_set_names_the_set():
    with pytest.raises(ConfigError, match=re.escape("so the SET that turns it on (data.synthetic.seed=1) must give "
                                                    "images_per_class (an integer, >= 2)")):
        load_profile("paper", ["data.synthetic.seed=1"])


def test_a_key_missing_from_the_protocol_itself_is_paper_yamls_to_give():
    values = {"profile": "paper", "overrides": [], **profiles.read_yaml(profiles.PROTOCOL)}
    del values["train"]["batch_size"]
    with pytest.raises(ConfigError, match=re.escape("setting 'train.batch_size' is missing: a profile gives only what "
                                                    "it changes and takes the rest from configs/paper.yaml")):
        config.validate_config(values)


def test_what_changes_no_result_reruns_nothing_and_what_does_reruns():
    # science_dict is what the notebooks' settings stamp and a sweep member's record compare: a setting
    # in it reruns every notebook. docs/settings.md's table says which settings change results.
    base = load_profile("smoke").science_dict()
    for same in ("cache.workers=3", "runtime.precision=fp32", "transforms.backend=pil", "paths.runs=elsewhere"):
        assert load_profile("smoke", [same]).science_dict() == base, same
    for other in ("cache.short_side=64", "train.stage1.epochs=9", "eval.bootstrap_samples=70"):
        assert load_profile("smoke", [other]).science_dict() != base, other


def test_a_command_the_study_suggests_names_the_profile_as_make_takes_it(tmp_path):
    from kvasir_utils.analysis import verdicts

    path = tmp_path / "my-hospital.yaml"
    path.write_text("base: smoke\n")
    mine, named = load_profile(path, ["train.stage1.epochs=1"]), load_profile("smoke")
    assert mine.profile == "my-hospital" and mine.profile_argument == str(path.resolve())
    assert named.profile_argument == "smoke"
    # make's own rule: PROFILE= takes the argument back to the same profile
    assert load_profile(mine.profile_argument).profile == "my-hospital"
    assert verdicts.sweep_command(mine).endswith(f"base: {path.resolve()}>")
    assert mine == load_profile(str(path), ["train.stage1.epochs=1"])  # the same settings, however it was named


def test_a_misspelt_base_names_the_file_that_gives_it(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: smok\n")
    named = rf"{re.escape(str(path))}: base: unknown profile 'smok'; known profiles: .*smoke"
    with pytest.raises(ConfigError, match=named):
        load_profile(path)


def test_the_profile_argument_survives_the_settings_read_back_from_a_run(tmp_path):
    from kvasir_utils.report import model_card, outputs

    path = tmp_path / "my-hospital.yaml"
    path.write_text("base: smoke\ndata: {classes: []}\n")
    cfg = load_profile(path, [f"paths.runs={tmp_path / 'runs'}"])
    assert profiles.profile_reference(path) == str(path.resolve()) == cfg.profile_argument
    bundled = profiles.profile_reference(config.CONFIG_DIR / "smoke.yaml")
    assert profiles.profile_reference("smoke") == "smoke" == bundled
    profiles.save_config(cfg, cfg.run.settings)
    assert model_card.run_settings(cfg).profile_argument == str(path.resolve())  # the card's commands
    assert profiles.with_protocol(cfg.to_dict()).profile_argument == "my-hospital"  # a record alone: the name
    assert outputs.known_classes(cfg) is None  # notebook 01 has not recorded the class folders yet
