"""The image-grounded decoder's cached decoding, with caches laid out for inference.

transformers' DynamicCache path (MED.lm_logits with past_key_values) was the caption stage's
largest cost at BLIP-base: in bf16 on one CPU core, decoding 8 images took more time than their
ViT. Its cross-attention keys and values are kept as the transposed views the projection made,
so every step copied 12 layers x 2 x 577 x 768 values per row to make them contiguous before a
matmul, and dropping a finished row gathered them all again. Here:
  - each image's cross-attention K/V are projected once, contiguous, and shared by its rows: the
    queries of an image's rows attend to them in one call, laid side by side in a grid (rows of
    one image differ only in their queries), as MED.itm_logits_grouped does for captions;
  - the self-attention K/V go into a buffer allocated once for max_length positions;
  - a finished row leaves the grid at once (the small self cache is gathered), but an image's
    K/V are compacted only when a quarter of them belong to images with no live row left, so
    the big copy is paid a few times per batch rather than at every finish;
  - a step calls the decoder's own modules (embeddings, linears, LayerNorms, the LM head) and
    PyTorch's fused scaled_dot_product_attention, with none of generate()'s bookkeeping.
Same weights, same arithmetic up to float rounding: tests/test_model_generation.py checks it
against the full recompute through MED.lm_logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.med import MED, group_slots

COMPACT_WHEN_DEAD = 0.25  # share of cached images with no live row that triggers compaction


class StaticCacheDecoder:
    """Next-token logits for a shrinking set of rows; row r starts as image r // rows_per_image.

    image_embeds: (B, N, Dv), the states the decoder cross-attends to (all of them, no mask, as
    MED.lm_logits); prefix: the tokens every row starts with; max_length: the most positions any
    row will reach.
    """

    def __init__(self, med: MED, image_embeds: torch.Tensor, prefix: list[int], rows_per_image: int, max_length: int):
        bert = med.text_decoder.bert
        self.embeddings, self.layers = bert.embeddings, list(bert.encoder.layer)
        self.head = med.text_decoder.cls.predictions
        first = self.layers[0].attention.self
        self.heads, self.head_dim = first.num_attention_heads, first.attention_head_size
        batch, device = image_embeds.shape[0], image_embeds.device
        dtype = self.embeddings.word_embeddings.weight.dtype
        image_embeds = image_embeds.to(dtype)
        # cross K/V per layer: (B, H, N, dh), contiguous, one copy per image
        self.cross = [(self._split(layer.crossattention.self.key(image_embeds)).contiguous(),
                       self._split(layer.crossattention.self.value(image_embeds)).contiguous())
                      for layer in self.layers]
        rows = batch * rows_per_image
        shape = (rows, self.heads, max_length, self.head_dim)
        self.self_kv = [(torch.empty(shape, dtype=dtype, device=device), torch.empty(shape, dtype=dtype, device=device))
                        for _ in self.layers]
        self.row_image = torch.arange(batch, device=device).repeat_interleave(rows_per_image)  # row -> slot in self.cross
        self._prefill(torch.tensor([prefix], device=device).expand(batch, -1), rows_per_image)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, H, T, dh)"""
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, T, dh) -> (B, T, D)"""
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], self.heads * self.head_dim)

    def _embed(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        emb = self.embeddings
        positions = emb.position_embeddings.weight[start : start + ids.shape[1]]
        return emb.LayerNorm(emb.word_embeddings(ids) + positions)

    def _prefill(self, ids: torch.Tensor, rows_per_image: int) -> None:
        """Run the prefix once per image, fill positions [0, P) of every row's self cache."""
        length = ids.shape[1]
        hidden = self._embed(ids, 0)  # (B, P, D)
        for layer, (keys, values), (cross_k, cross_v) in zip(self.layers, self.self_kv, self.cross):
            attn = layer.attention.self
            k, v = self._split(attn.key(hidden)), self._split(attn.value(hidden))
            keys[:, :, :length] = k.repeat_interleave(rows_per_image, dim=0)
            values[:, :, :length] = v.repeat_interleave(rows_per_image, dim=0)
            context = F.scaled_dot_product_attention(self._split(attn.query(hidden)), k, v, is_causal=True)
            hidden = layer.attention.output(self._merge(context), hidden)
            cross = layer.crossattention
            context = F.scaled_dot_product_attention(self._split(cross.self.query(hidden)), cross_k, cross_v)
            hidden = layer.feed_forward_chunk(cross.output(self._merge(context), hidden))
        logits = self.head(hidden[:, -1, :]).float()  # (B, V)
        self.first_logits = logits.repeat_interleave(rows_per_image, dim=0)
        self.length = length

    def next_logits(self, seqs: torch.Tensor, cur_len: int, first: bool) -> torch.Tensor:
        """seqs: (R, >= cur_len) of the live rows -> (R, V) logits for position cur_len."""
        if first:
            return self.first_logits
        if cur_len != self.length + 1:
            raise ValueError(f"the cache holds {self.length} positions; asked for position {cur_len}")
        pos = self.length
        hidden = self._embed(seqs[:, pos : pos + 1], pos)  # (R, 1, D)
        slots, width = group_slots(self.row_image, self.cross[0][0].shape[0])
        for layer, (keys, values), (cross_k, cross_v) in zip(self.layers, self.self_kv, self.cross):
            attn = layer.attention.self
            keys[:, :, pos : pos + 1] = self._split(attn.key(hidden))
            values[:, :, pos : pos + 1] = self._split(attn.value(hidden))
            context = F.scaled_dot_product_attention(self._split(attn.query(hidden)), keys[:, :, : pos + 1],
                                                     values[:, :, : pos + 1])
            hidden = layer.attention.output(self._merge(context), hidden)
            cross = layer.crossattention
            query = cross.self.query(hidden)[:, 0, :]  # (R, D)
            grid = query.new_zeros(cross_k.shape[0] * width, query.shape[-1])
            grid[slots] = query
            queries = grid.view(cross_k.shape[0], width, self.heads, self.head_dim).transpose(1, 2)
            context = F.scaled_dot_product_attention(queries, cross_k, cross_v)  # (S, H, width, dh)
            context = context.transpose(1, 2).reshape(-1, self.heads * self.head_dim)[slots].unsqueeze(1)
            hidden = layer.feed_forward_chunk(cross.output(context, hidden))
        self.length += 1
        return self.head(hidden[:, 0, :]).float()

    def keep_rows(self, index: torch.Tensor) -> None:
        """Drop finished rows (index: the rows kept, in order)."""
        self.self_kv = [(k[index], v[index]) for k, v in self.self_kv]
        self.row_image = self.row_image[index]
        slots = self.cross[0][0].shape[0]
        live = torch.unique(self.row_image)
        if live.numel() <= (1 - COMPACT_WHEN_DEAD) * slots:
            self.cross = [(k[live], v[live]) for k, v in self.cross]
            self.row_image = torch.searchsorted(live, self.row_image)

    def reorder_beams(self, index: torch.Tensor) -> None:
        """Rows take the self cache of rows `index`, always rows of the same image (beam search
        reorders an image's beams among themselves), so the cross K/V stay as they are."""
        self.self_kv = [(k[index], v[index]) for k, v in self.self_kv]

