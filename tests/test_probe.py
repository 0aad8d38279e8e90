"""The runtime probe (train.probe): precision and memory format chosen by measuring the model's own
training step, once per machine and model, and never where the setting is given."""

import json

import torch

from kvasir_utils.profiles import load_profile
from kvasir_utils.provenance import describe_runtime
from kvasir_utils.train import hardware, models, probe
from tests.helpers import tmp_overrides

# the smallest stage worth probing: resnet18, 32 px, batch 4, only the head trained
SMALL = ["transforms.image_size=32", "train.batch_size=4"]


def _stage_model():
    torch.manual_seed(0)
    model = models.build_model("resnet18", 8)
    models.set_trainable(model, "head")
    return model


def test_the_probe_measures_once_chooses_and_the_record_says_so(tmp_path):
    cfg = load_profile("smoke", [*tmp_overrides(tmp_path), *SMALL, "runtime.device=cpu", "runtime.precision=auto",
                                 "runtime.memory_format=auto"])
    runtime, model = hardware.resolve_runtime(cfg.runtime), _stage_model()
    assert runtime.pending == ("precision", "memory_format")
    weights, rng = {k: v.clone() for k, v in model.state_dict().items()}, torch.get_rng_state()
    chosen = probe.choose(runtime, model, "resnet18", cfg)
    # the model and torch's random state are as they were: the probe trains copies
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
    native = hardware.native_bf16(runtime.device)
    assert chosen.pending == () and set(chosen.probe) == {"precision", "memory_format"}
    precision, layout = chosen.probe["precision"], chosen.probe["memory_format"]
    assert (precision["ratio"] is not None) == native  # bf16 is measured only where it is native
    path = probe.probe_file(cfg)
    kept = json.loads(path.read_text())
    assert len(kept) == (2 if native else 1)
    assert all("resnet18, 32 px, batch 4 | cpu | " in key and torch.__version__ in key for key in kept)
    pairs = {key.split(",")[0]: pair for key, pair in kept.items()}
    assert chosen.precision == ("bf16" if native and probe.pays(pairs["bf16 vs fp32"]) else "fp32")
    assert chosen.channels_last == probe.pays(pairs["channels_last vs contiguous"]) and layout["ratio"] > 0
    # a second call measures nothing: it reads the file (here planted with another memory-format figure)
    key = next(key for key in kept if key.startswith(f"channels_last vs contiguous, {chosen.precision} |"))
    kept[key] |= {"ratio": 1.5, "low": 1.2}
    path.write_text(json.dumps(kept))
    again = probe.choose(runtime, model, "resnet18", cfg)
    assert again.channels_last and again.probe["memory_format"] == {"chose": "channels_last", "ratio": 1.5,
                                                                    "why_not": None}
    assert again.precision == chosen.precision and again.probe["precision"] == precision
    assert json.loads(path.read_text()) == kept  # nothing measured, nothing added
    record = again.record()
    assert record["channels_last"] and record["probe"] == again.probe
    assert "channels_last 1.50x contiguous" in describe_runtime(record)
    measured = precision["ratio"] or 0.0
    said = {"bf16": f"bf16 {measured:.2f}x fp32", "fp32": f"fp32, as bf16 measured {measured:.2f}x"}
    assert (said[chosen.precision] if native else "fp32, no native bf16") in describe_runtime(record)


def test_a_setting_given_explicitly_is_never_probed(tmp_path):
    cfg = load_profile("smoke", [*tmp_overrides(tmp_path), *SMALL, "runtime.device=cpu", "runtime.precision=fp32",
                                 "runtime.memory_format=channels_last"])
    runtime = hardware.resolve_runtime(cfg.runtime)
    assert runtime.pending == () and runtime.channels_last and runtime.precision == "fp32"
    assert probe.choose(runtime, _stage_model(), "resnet18", cfg) is runtime
    assert not probe.probe_file(cfg).exists()
    assert "chosen by" not in runtime.describe() and runtime.record()["probe"] == {}


def test_a_record_from_before_the_probe_is_still_described():
    record = hardware.resolve_runtime(load_profile("paper", ["runtime.device=cpu"]).runtime).record()
    del record["probe"]  # checkpoints and metrics.json written before the probe existed
    assert describe_runtime(record).startswith("cpu, ")


def test_a_choice_is_kept_only_where_every_round_found_it_faster():
    assert probe.pays({"ratio": 1.30, "low": 1.02})
    assert not probe.pays({"ratio": 1.30, "low": 0.95})  # one round slower: noise, not a gain
    assert not probe.pays({"ratio": 1.04, "low": 1.01})  # under MIN_GAIN


def test_the_probe_runs_at_a_small_batch_whatever_the_stages_batch(tmp_path):
    cfg = load_profile("smoke", [*tmp_overrides(tmp_path), "transforms.image_size=32", "train.batch_size=32",
                                 "runtime.device=cpu", "runtime.precision=fp32", "runtime.memory_format=auto"])
    probe.choose(hardware.resolve_runtime(cfg.runtime), _stage_model(), "resnet18", cfg)
    assert [key.split(" | ")[1] for key in json.loads(probe.probe_file(cfg).read_text())] == [
        f"resnet18, 32 px, batch {probe.PROBE_BATCH}"]


def test_a_trained_model_is_used_as_its_stages_chose_without_a_probe():
    cpu = hardware.resolve_runtime(load_profile("paper", ["runtime.device=cpu"]).runtime)
    assert cpu.pending == ("precision", "memory_format")
    recorded = {"precision": "fp32", "channels_last": True, "probe": {"memory_format": {"chose": "channels_last",
                                                                                     "ratio": 1.2}}}
    used = probe.adopt(cpu, recorded)
    assert (used.precision, used.channels_last, used.pending) == ("fp32", True, ())
    assert used.probe == recorded["probe"]
    bf16 = probe.adopt(cpu, {"precision": "bf16", "channels_last": False})
    assert bf16.precision == ("bf16" if hardware.native_bf16(cpu.device) else "fp32")  # never emulated bf16
    old = probe.adopt(cpu, {})  # a checkpoint from before the probe: resolve_runtime's rule
    assert (old.precision, old.channels_last) == (cpu.precision, cpu.channels_last) and old.pending == ()
    given = hardware.resolve_runtime(load_profile("paper", ["runtime.device=cpu", "runtime.precision=fp32",
                                                            "runtime.memory_format=contiguous"]).runtime)
    assert probe.adopt(given, recorded) is given  # a setting given is used as given


def test_measurements_under_instruction_set_limits_are_kept_apart(monkeypatch):
    # the emulated CPU without AVX-512 (docs/development.md) is the same CPU model by name, with other speeds
    for name in ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY"):
        monkeypatch.delenv(name, raising=False)
    native = probe.machine(torch.device("cpu"))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    emulated = probe.machine(torch.device("cpu"))
    assert emulated != native and " under ONEDNN_MAX_CPU_ISA=AVX2 (" in emulated
    assert emulated.replace(" under ONEDNN_MAX_CPU_ISA=AVX2", "") == native


def test_the_pages_say_why_a_faster_measured_alternative_was_not_kept():
    from kvasir_utils.provenance import describe_probe

    noisy = {"ratio": 1.32, "low": 0.56, "high": 1.43, "rounds": 5}
    assert not probe.pays(noisy) and probe.why_not({"ratio": 1.3, "low": 1.1, "rounds": 5}) is None
    said = describe_probe({"precision": {"chose": "fp32", "ratio": 1.32, "why_not": probe.why_not(noisy)}})
    assert "fp32, as bf16 measured 1.32x but slower in one of its 5 rounds (0.56x), so not surely faster" in said
    small = probe.why_not({"ratio": 1.02, "low": 1.01, "rounds": 5})
    assert small == f"below the {probe.MIN_GAIN:.2f}x it must gain"
    assert describe_probe({"precision": {"chose": "fp32", "ratio": 1.32}}).endswith("measured 1.32x)")  # older record
