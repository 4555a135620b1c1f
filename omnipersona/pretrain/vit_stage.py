"""Stage 1b: pretrain the vision encoder on world pictures, standing in for SigLIP's pretraining.

BAGEL starts from a pretrained SigLIP; a randomly initialised ViT learns the world's visual
vocabulary far too slowly inside the multimodal mix on a CPU budget. So the ViT first learns to
name what a picture shows (shape, colour, pattern, accessory, scene, item) through linear heads on
its mean-pooled patch features, on the model's own packed NaViT path. The heads are thrown away.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from ..model.bagel import Bagel
from ..model.images import to_tensor
from ..model.layers import flattened_position_ids, patchify
from .labels import HEADS, labelled_render
from .steps import log_progress, optimizer_step

_VIT_STREAM = 49979687


def train_vit(model: Bagel, *, steps: int, batch_size: int, lr: float, size: int, seed: int, log=print) -> list[float]:
    cfg = model.config
    vit = model.vit_model
    heads = nn.ModuleDict({name: nn.Linear(cfg.vit.hidden_size, len(values)) for name, values in HEADS.items()})
    params = [p for p in vit.parameters() if p.requires_grad] + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 30) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / max(1, steps))))
    )
    p = cfg.vit.patch_size
    pos = flattened_position_ids(size, size, p, cfg.vit_max_num_patch_per_side)
    per_image = (size // p) ** 2
    vit.train()
    losses, start = [], time.time()
    for step in range(steps):
        drawn = [labelled_render(seed, step * batch_size + i, size, _VIT_STREAM) for i in range(batch_size)]
        tokens = torch.cat([patchify(to_tensor(im), p) for im, _ in drawn])
        feats = vit(tokens, pos.repeat(batch_size), [per_image] * batch_size)
        pooled = feats.view(batch_size, per_image, -1).mean(1)
        loss = torch.zeros(())
        for name, head in heads.items():
            target = torch.tensor([labels[name] for _, labels in drawn])
            loss = loss + F.cross_entropy(head(pooled), target, ignore_index=-1)
        losses.append(optimizer_step(loss, params, opt, sched))
        log_progress(log, "vit", step, steps, losses, start, digits=3)
    vit.eval()
    return losses
