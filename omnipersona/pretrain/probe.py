"""A judge for generated and edited images: a small CNN trained on world renders.

It reads the visible attributes the world defines (object present, shape, colour, pattern,
accessory, accessory colour, background, private item icon) off a picture, so generation fidelity,
PARG and editing are checked the way OmniPBench's judges do, with exact labels instead of a VLM
(`omnipersona.world.judging.WorldJudge` turns its readings into metrics). Its penultimate features
are the CLIP-I analogue (image-feature cosine to the references). `world_judge` is the job's
`world` judge plug-in (`omnipersona.evaluation.plugins`).

Trained on clean renders plus blurred / resampled / noisy copies, so it reads the soft pictures a
small VAE decodes as well. Independent of the model under test; shipped with the world base for its
32-pixel pictures (`shipped.py`), trained and cached for other sizes.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file
from torch import nn

from ..world.judging import Reading, WorldJudge
from .labels import HEADS
from .labels import labelled_render as _labelled
from .shipped import SHIPPED_PROBE, shipped_probe_config

OBJECT_HEADS = ("shape", "colour", "pattern", "accessory_type", "accessory_colour")
PROBE_ENV = "OMNIPERSONA_BASE_CACHE"


class ProbeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    image_size: int = 32
    width: int = 32
    feature_dim: int = 128
    steps: int = Field(700, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = 1.5e-3
    seed: int = 0
    # Chance a training picture is an empty scene; chance its object carries an accessory item.
    empty_fraction: float = Field(0.12, ge=0, le=1)
    item_fraction: float = Field(0.4, ge=0, le=1)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps({"v": 1, **self.model_dump()}, sort_keys=True).encode()).hexdigest()[:12]


class WorldProbe(nn.Module, WorldJudge):
    """The probe network; its `read` and `features` make it a `WorldJudge` (the harness' picture judge)."""

    def __init__(self, cfg: ProbeConfig = ProbeConfig()):
        super().__init__()
        self.cfg = cfg
        w = cfg.width

        def block(cin, cout, stride):
            # GroupNorm keeps the shared trunk alive under eight heads' gradients (plain ReLU convs die).
            return [nn.Conv2d(cin, cout, 3, padding=1, stride=stride), nn.GroupNorm(8, cout), nn.SiLU()]

        self.body = nn.Sequential(
            *block(3, w, 1), *block(w, w, 2), *block(w, 2 * w, 1), *block(2 * w, 2 * w, 2), *block(2 * w, 2 * w, 2)
        )
        side = cfg.image_size // 8
        self.neck = nn.Sequential(nn.Flatten(), nn.Linear(2 * w * side * side, cfg.feature_dim), nn.LayerNorm(cfg.feature_dim), nn.SiLU())
        self.heads = nn.ModuleDict({name: nn.Linear(cfg.feature_dim, len(v)) for name, v in HEADS.items()})

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        feats = self.neck(self.body(x))
        return feats, {name: head(feats) for name, head in self.heads.items()}

    # ------------------------------------------------------------------ inference
    def to_batch(self, images) -> torch.Tensor:
        size = self.cfg.image_size
        arrays = []
        for im in images:
            if not hasattr(im, "resize"):
                from PIL import Image

                im = Image.fromarray(np.asarray(im))
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), resample=3)  # bicubic, like the model's preprocessing
            arrays.append(np.asarray(im, dtype=np.float32) / 127.5 - 1.0)
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    @torch.no_grad()
    def features(self, images) -> torch.Tensor:
        """Penultimate features [N, D] (the CLIP-I analogue's embedding)."""
        return self(self.to_batch(images))[0]

    @torch.no_grad()
    def read(self, images) -> list[Reading]:
        _, logits = self(self.to_batch(images))
        # A worn accessory always has a colour: read the colour among real colours only.
        logits["accessory_colour"][:, 0] = float("-inf")
        picks = {name: l.argmax(-1).tolist() for name, l in logits.items()}
        out = []
        for i in range(len(picks["shape"])):
            value = {name: HEADS[name][picks[name][i]] for name in HEADS}
            accessory = "none" if value["accessory_type"] == "none" else f"{value['accessory_colour']} {value['accessory_type']}"
            out.append(Reading(value["present"] == "yes", value["shape"], value["colour"], value["pattern"],
                               accessory, value["background"], value["item"]))
        return out


# ---------------------------------------------------------------------- training data
_PROBE_STREAM = 32452843  # the probe's own pictures (the base's vision pretraining draws another stream)


def labelled_render(seed: int, index: int, cfg: ProbeConfig):
    """A random world image and its labels (-1 = not applicable)."""
    return _labelled(seed, index, cfg.image_size, _PROBE_STREAM, cfg.empty_fraction, cfg.item_fraction)


def _degrade(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Blur, down-up resampling and noise, per image: the look of decoded generations."""
    n, _, h, w = x.shape
    out = x.clone()
    kind = torch.randint(0, 3, (n,), generator=g)
    blur = kind == 1
    if blur.any():
        sigma = 0.5 + 0.7 * torch.rand((), generator=g).item()
        k = torch.exp(-(torch.arange(-2, 3, dtype=torch.float32) ** 2) / (2 * sigma**2))
        k = (k[:, None] * k[None, :]) / k.sum() ** 2
        weight = k.expand(3, 1, 5, 5).contiguous()
        out[blur] = F.conv2d(F.pad(x[blur], (2, 2, 2, 2), mode="replicate"), weight, groups=3)
    down = kind == 2
    if down.any():
        small = F.interpolate(x[down], size=(h // 2, w // 2), mode="bilinear", antialias=True, align_corners=False)
        out[down] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    noise = torch.rand(n, 1, 1, 1, generator=g) * 0.08
    return (out + noise * torch.randn(out.shape, generator=g)).clamp(-1, 1)


def train_probe(cfg: ProbeConfig = ProbeConfig(), log=print) -> WorldProbe:
    torch.manual_seed(cfg.seed)
    probe = WorldProbe(cfg)
    opt = torch.optim.AdamW(probe.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 30) * 0.5 * (1 + math.cos(math.pi * s / max(1, cfg.steps)))
    )
    g = torch.Generator().manual_seed(cfg.seed)
    start = time.time()
    for step in range(cfg.steps):
        drawn = [labelled_render(cfg.seed, step * cfg.batch_size + i, cfg) for i in range(cfg.batch_size)]
        x = _degrade(probe.to_batch([im for im, _ in drawn]), g)
        _, logits = probe(x)
        loss = torch.zeros(())
        for name in HEADS:
            target = torch.tensor([lab[name] for _, lab in drawn])
            loss = loss + F.cross_entropy(logits[name], target, ignore_index=-1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log and (step % 200 == 0 or step == cfg.steps - 1):
            log(f"probe step {step}/{cfg.steps} loss {float(loss.detach()):.3f} ({time.time() - start:.0f}s)")
    return probe.eval()


@torch.no_grad()
def probe_accuracy(probe: WorldProbe, n: int = 512, seed: int = 12345) -> dict[str, float]:
    """Per-head accuracy on fresh clean renders (other seeds than training)."""
    cfg = probe.cfg.model_copy(update={"seed": seed})
    drawn = [labelled_render(seed, i, cfg) for i in range(n)]
    _, logits = probe(probe.to_batch([im for im, _ in drawn]))
    out = {}
    for name in HEADS:
        target = torch.tensor([lab[name] for _, lab in drawn])
        valid = target >= 0
        out[name] = float((logits[name].argmax(-1)[valid] == target[valid]).float().mean())
    return out


# ---------------------------------------------------------------------- cache
def probe_folder(cfg: ProbeConfig = ProbeConfig(), root: str | Path | None = None) -> Path:
    root = Path(root or os.environ.get(PROBE_ENV) or Path.home() / ".cache" / "omnipersona")
    return root / f"world-probe-{cfg.digest()}"


def ensure_probe(cfg: ProbeConfig = ProbeConfig(), root: str | Path | None = None, log=print, shipped: bool = True) -> WorldProbe:
    """The probe for `cfg`: the shipped one when its config is `cfg` (and `shipped` and no `root` are
    given), else the cached one, trained first when missing (~1-3 min on one CPU core)."""
    folder = probe_folder(cfg, root)
    if shipped and root is None and shipped_probe_config() == cfg.model_dump():
        folder = SHIPPED_PROBE
    weights = folder / "probe.safetensors"
    if weights.exists():
        probe = WorldProbe(cfg)
        probe.load_state_dict(load_file(weights))
        return probe.eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        probe = train_probe(cfg, log=log)
    finally:
        torch.set_num_threads(threads)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "probe.safetensors.partial"
    save_file({k: v.contiguous() for k, v in probe.state_dict().items()}, tmp)
    (folder / "probe_config.json").write_text(cfg.model_dump_json(indent=2))
    tmp.rename(weights)
    return probe


def world_judge(image_size: int, log=print) -> WorldProbe:
    """The `world` judge plug-in: the probe for pictures of `image_size` pixels (shipped for 32, the
    world base's size; trained once and cached for others)."""
    return ensure_probe(ProbeConfig(image_size=image_size), log=log)
