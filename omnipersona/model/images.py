"""PIL / numpy <-> model tensors (no torchvision): resize to model sizes, [-1, 1] scaling."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def to_tensor(image: Image.Image | np.ndarray, size: tuple[int, int] | None = None) -> torch.Tensor:
    """RGB image -> float [3, H, W] in [-1, 1]; `size` = (height, width) resizes with bicubic + antialias."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image = image.convert("RGB")
    if size is not None and (image.height, image.width) != tuple(size):
        image = image.resize((size[1], size[0]), Image.BICUBIC)
    arr = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def to_pil(tensor: torch.Tensor) -> Image.Image:
    """[3, H, W] or [1, 3, H, W] in [-1, 1] -> RGB PIL image."""
    if tensor.dim() == 4:
        tensor = tensor[0]
    arr = ((tensor.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr)
