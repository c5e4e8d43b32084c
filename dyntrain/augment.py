"""Batch augmentation on the device (the paper names augmentation only generically; Table 5).

Random horizontal flip and random translation by up to 4 pixels (pad 4 with zeros, crop 32), drawn
per image. Fixed shapes, no host round trip, randomness from the caller's generator so that a
resumed run draws the same numbers.
"""

from __future__ import annotations

import torch

PAD = 4


def flip_and_translate(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """x: (N, C, H, W) batch of any dtype. Returns a new tensor of the same shape."""
    n, _, h, w = x.shape
    flip = torch.rand(n, device=x.device, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    # One gather per image: row/column index grids shifted by the image's offset into the padded batch.
    shift = torch.randint(0, 2 * PAD + 1, (2, n), device=x.device, generator=generator)
    rows = (torch.arange(h, device=x.device)[None, :] + shift[0][:, None])[:, None, :, None]
    cols = (torch.arange(w, device=x.device)[None, :] + shift[1][:, None])[:, None, None, :]
    padded = torch.nn.functional.pad(x, (PAD, PAD, PAD, PAD))
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]
