"""Zero-shot video transfers, as BLIP's eval_retrieval_video.py does them: n frames sampled
uniformly, each through the ViT.

- Retrieval (the retrieval/filter model): the video's ITC feature is the mean of its frames'
  projected [CLS] features, then normalised; ITM (and the ITC similarity added to it, as for
  images) re-ranks the top k over the frames' tokens concatenated into one sequence.
- Video QA (the VQA model): the question's encoder cross-attends to the concatenated frame tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.med import MED


def uniform_frames(available: int, n: int) -> list[int]:
    """n frame indices spread uniformly over `available` frames (the middle of n equal segments,
    as BLIP's video loader samples them); all frames when there are no more than n."""
    if available <= n:
        return list(range(available))
    step = available / n
    return [int(step * i + step / 2) for i in range(n)]


def video_embeds(med: MED, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """frames (B, F, 3, H, W) -> (ITC feature (B, E), tokens of all frames (B, F * (1 + N), Dv))."""
    b, f = frames.shape[:2]
    embeds = med.encode_image(frames.flatten(0, 1))  # (B F, 1 + N, Dv)
    feature = F.normalize(med.vision_proj(embeds[:, 0, :]).view(b, f, -1).mean(dim=1), dim=-1)
    return feature, embeds.view(b, f * embeds.shape[1], embeds.shape[2])
