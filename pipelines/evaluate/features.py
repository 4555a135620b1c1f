"""Image-feature extractors for the `*_i` cosines on real photos: CLIP-I, DINO, face similarity.

The world probe's features stand in for CLIP on world images. With real BAGEL weights and real
photos, pass real embedders to `evaluate_concept(..., extractors=standard_extractors(...))`:

    extractors = standard_extractors(clip="openai/clip-vit-large-patch14", dino="facebook/dinov2-base",
                                     face=my_face_embedder, device="cuda")

`clip` / `dino` are local folders or hub ids (transformers loads them; nothing is downloaded unless
the hub is reachable). `face` is any callable images -> [N, D] array (e.g. an InsightFace
ArcFace wrapper); faces are not part of the world, so the world harness has no face metric.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from omnipersona.evaluation import FeatureExtractor


class HFImageFeatures:
    """Pooled image embeddings of a transformers vision model (CLIP: projected `image_embeds`;
    DINOv2 and others: the CLS token of the last hidden state)."""

    def __init__(self, model_path: str, device: str = "cpu", batch_size: int = 32):
        from transformers import AutoConfig, AutoImageProcessor

        self.device, self.batch_size = device, batch_size
        config = AutoConfig.from_pretrained(model_path)
        self.processor = AutoImageProcessor.from_pretrained(model_path)
        kind = getattr(config, "model_type", "")
        if kind in ("clip", "clip_vision_model"):
            from transformers import CLIPVisionModelWithProjection

            self.model, self.clip = CLIPVisionModelWithProjection.from_pretrained(model_path), True
        else:
            from transformers import AutoModel

            self.model, self.clip = AutoModel.from_pretrained(model_path), False
        self.model.to(device).eval()

    @torch.no_grad()
    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        out = []
        for i in range(0, len(images), self.batch_size):
            chunk = [im.convert("RGB") for im in images[i : i + self.batch_size]]
            pixels = self.processor(images=chunk, return_tensors="pt")["pixel_values"].to(self.device)
            result = self.model(pixel_values=pixels)
            emb = result.image_embeds if self.clip else result.last_hidden_state[:, 0]
            out.append(emb.float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0))


def standard_extractors(
    clip: str | None = None,
    dino: str | None = None,
    face: Callable[[Sequence[Image.Image]], np.ndarray] | None = None,
    device: str = "cpu",
) -> dict[str, FeatureExtractor]:
    """{'clip_i': ..., 'dino_i': ..., 'face_sim': ...} for whichever are given."""
    extractors: dict[str, FeatureExtractor] = {}
    if clip:
        extractors["clip_i"] = HFImageFeatures(clip, device)
    if dino:
        extractors["dino_i"] = HFImageFeatures(dino, device)
    if face is not None:
        extractors["face_sim"] = face
    return extractors
