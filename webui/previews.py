"""Cheap live previews: latents mapped to RGB by a fixed linear projection (no VAE decode).

The projection factors for SD 1.x/2.x and SDXL latents are the widely used
approximations (as in ComfyUI's latent previews); for 16-channel SD3 latents the
first three channels are normalised, which shows composition, not true colour.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

SD1_FACTORS = [
    [0.3512, 0.2297, 0.3227],
    [0.3250, 0.4974, 0.2350],
    [-0.2829, 0.1762, 0.2721],
    [-0.2120, -0.2616, -0.7177],
]
SDXL_FACTORS = [
    [0.3651, 0.4232, 0.4341],
    [-0.2533, -0.0042, 0.1068],
    [0.1076, 0.1111, -0.0362],
    [-0.3165, -0.2492, -0.2188],
]
SDXL_BIAS = [0.1084, -0.0175, -0.0011]


def latents_to_preview(latents: torch.Tensor, family: str, max_side: int = 256) -> Image.Image:
    """An RGB preview of the first latent of a batch, upscaled 8x (at most ``max_side``)."""
    latent = latents[0].detach().float().cpu()
    if latent.shape[0] == 4:
        factors = torch.tensor(SDXL_FACTORS if family.startswith("sdxl") else SD1_FACTORS)
        rgb = torch.einsum("chw,cr->rhw", latent, factors)
        if family.startswith("sdxl"):
            rgb = rgb + torch.tensor(SDXL_BIAS)[:, None, None]
        rgb = (rgb + 1.0) / 2.0
    else:
        rgb = latent[:3]
        low = rgb.amin(dim=(1, 2), keepdim=True)
        high = rgb.amax(dim=(1, 2), keepdim=True)
        rgb = (rgb - low) / (high - low).clamp_min(1e-6)
    array = (rgb.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    image = Image.fromarray(array)
    scale = max(1, min(8, max_side // max(image.size)))
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
