"""What many tests share: settings that point a profile at a temporary folder, a tiny generated
dataset, and a local HTTP server's request handler (fixtures that use them are in conftest.py)."""

from __future__ import annotations

import http.server
from pathlib import Path

from kvasir_utils import profiles
from kvasir_utils.data import prepare

# What the suite holds on its temporary disk at its peak, with room to spare; conftest's
# pytest_sessionstart refuses less. The measurement is in docs/development.md (How much disk it takes).
DISK_NEEDED = 2_500_000_000

# The smoke chain (conftest.smoke_chain): the smoke profile with fewer bootstrap resamples, at 32 px
# instead of 64. Training ResNet50 is most of the chain's processor time, and at 32 px a step takes
# under half its time at 48 px (0.29 s against 0.64 s for 16 images, fp32 on one AVX2 core). The
# sizes the tests count on stay the smoke profile's: 40 images a class (the planted traps' rates, the
# frames the HyperKvasir-shaped tree shares), 64 validation images, 3 + 3 epochs. Both models still
# learn: a class's cue is the colour and shape of a blob, which 32 px keeps (the engine's tests train
# at 32 px too), and Grad-CAM takes the last layer whose maps are larger than 1x1 (2x2 either way).
SMOKE_CHAIN = ["eval.bootstrap_samples=50", "transforms.image_size=32"]


def tmp_overrides(root: Path) -> list[str]:
    """Point every path of a profile at ``root``."""
    return [f"paths.data={root / 'data'}", f"paths.runs={root / 'runs'}", f"paths.reports={root / 'reports'}"]


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves files from ``server.root`` with Range support (``server.ignore_range`` turns it off,
    as some servers do); ``server.cut_after`` bytes makes the next response stop early, as a
    dropped connection does."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = self.server.root / self.path.lstrip("/")
        self.server.requests.append(dict(self.headers))
        if not path.is_file():
            self.send_error(404, "Not Found")
            return
        body = path.read_bytes()
        start = 0
        if "Range" in self.headers and not self.server.ignore_range:
            start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_error(416, "Range Not Satisfiable")
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.server.cut_after is not None:
            payload, self.server.cut_after = payload[: self.server.cut_after], None
        self.wfile.write(payload)


TINY = ["data.synthetic.images_per_class=16", "data.expected_per_class=16", "cache.short_side=40",
        "transforms.image_size=32", "train.batch_size=16", "runtime.precision=fp32", "runtime.memory_format=contiguous",
        "split.val_fraction=0.25"]


def prepare_tiny_dataset(root: Path, extra: list[str] = ()):
    """The data stage (notebook 01's calls) on a tiny generated dataset under ``root``."""
    cfg = profiles.load_profile("smoke", tmp_overrides(root) + TINY + ["cache.workers=1", *extra])
    prepare.prepare_split(cfg, prepare.prepare_dataset(cfg, progress=False))
    return cfg


def tiny_config(root: Path, runs: Path, extra: list[str] = ()):
    return profiles.load_profile("smoke", tmp_overrides(root) + TINY + [f"paths.runs={runs}", *extra])


def fewest_right_beyond_chance(images: int, chance: float, p_value: float = 1e-6) -> int:
    """The fewest right answers among ``images`` that a guesser right with probability ``chance`` on each
    reaches with probability under ``p_value`` (the binomial tail). A model with that many learned from
    the images: this holds by counting alone, whatever the CPU's rounding did to its weights."""
    from scipy.stats import binom

    return int(binom.isf(p_value, images, chance)) + 1  # isf: the smallest k with P(right > k) <= p_value


def paper_settings(section: str, **changes):
    """One section of the paper's protocol (``transforms``, ``runtime``, ...) with ``changes``, validated."""
    current = getattr(profiles.load_profile("paper"), section)
    return type(current).model_validate({**current.model_dump(), **changes})



def metrics_record(**values) -> dict:
    """A metrics.json record as notebook 04 writes it (``artefacts.Metrics``), zeros but for ``values``:
    for tests that write a run's evaluation by hand."""
    from kvasir_utils.artefacts import Metrics

    blank = {"int": 0, "float": 0.0, "bool": False}
    record = {name: blank.get(getattr(field.annotation, "__name__", ""), {})
              for name, field in Metrics.model_fields.items()}
    return Metrics.model_validate({**record, **values}).model_dump()


def lora_count(cfg, name: str) -> int:
    """The parameters a LoRA stage trains, from the model itself: rank x (in + out) over the target
    layers (train.lora.target_modules), plus the new head."""
    import torch

    from kvasir_utils.train import models

    with torch.device("meta"):
        model = models.build_model(name, len(cfg.classes), image_size=cfg.transforms.image_size)
    rank, targets = cfg.train.lora.rank, set(cfg.train.lora.target_modules)
    adapters = sum(rank * (m.in_features + m.out_features) for n, m in model.named_modules()
                   if n.rsplit(".", 1)[-1] in targets)
    head = model.get_submodule(models.head_name(model))
    return adapters + sum(p.numel() for p in head.parameters())
