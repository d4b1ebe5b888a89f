"""Synthetic token layouts for the core tests (Qwen2.5-Omni order: per chunk video, then audio)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import strategies as st

from omnizip import Modality, TokenLayout


@dataclass(frozen=True)
class Spec:
    chunks: tuple[tuple[int, int], ...]  # (audio tokens, video frames) per chunk
    p: int = 4  # tokens per frame
    d: int = 8
    text_head: int = 2
    text_between: bool = False
    text_tail: int = 1
    clustered: bool = False
    saliency: bool = True


def make_layout(spec: Spec, *, seed: int = 0, dtype: torch.dtype = torch.float32, t0_s: float = 0.0,
                with_positions: bool = True) -> TokenLayout:
    gen = torch.Generator().manual_seed(seed)
    mod: list[int] = [Modality.TEXT] * spec.text_head
    chunk: list[int] = [-1] * spec.text_head
    frame: list[int] = [-1] * spec.text_head
    f = 0
    for c, (na, nf) in enumerate(spec.chunks):
        for _ in range(nf):
            mod += [Modality.VIDEO] * spec.p
            chunk += [c] * spec.p
            frame += [f] * spec.p
            f += 1
        mod += [Modality.AUDIO] * na
        chunk += [c] * na
        frame += [-1] * na
        if spec.text_between:
            mod.append(Modality.TEXT)
            chunk.append(-1)
            frame.append(-1)
    mod += [Modality.TEXT] * spec.text_tail
    chunk += [-1] * spec.text_tail
    frame += [-1] * spec.text_tail
    n = len(mod)
    if spec.clustered:
        centres = torch.randn(5, spec.d, generator=gen)
        pick = torch.randint(0, 5, (n,), generator=gen)
        embeds = centres[pick] + 0.25 * torch.randn(n, spec.d, generator=gen)
    else:
        embeds = torch.randn(n, spec.d, generator=gen)
    modality = torch.tensor([int(m) for m in mod], dtype=torch.int64)
    n_audio = int((modality == Modality.AUDIO).sum())
    saliency = torch.rand(n_audio, generator=gen) if spec.saliency else None
    positions = torch.stack([torch.arange(n), torch.arange(n) // 2, torch.arange(n) % 3]) if with_positions else None
    return TokenLayout(
        embeds=embeds.to(dtype),
        modality=modality,
        chunk_id=torch.tensor(chunk, dtype=torch.int64),
        frame_id=torch.tensor(frame, dtype=torch.int64),
        audio_saliency=saliency,
        positions=positions,
        t0_s=t0_s,
    )


def clone_layout(layout: TokenLayout) -> dict[str, torch.Tensor | None]:
    return {
        name: (None if getattr(layout, name) is None else getattr(layout, name).clone())
        for name in ("embeds", "modality", "chunk_id", "frame_id", "audio_saliency", "positions")
    }


def assert_layout_unchanged(layout: TokenLayout, before: dict[str, torch.Tensor | None]) -> None:
    for name, value in before.items():
        now = getattr(layout, name)
        if value is None:
            assert now is None
        else:
            assert torch.equal(now, value), f"{name} was modified"


@st.composite
def specs(draw: st.DrawFn, max_chunks: int = 4) -> Spec:
    n_chunks = draw(st.integers(1, max_chunks))
    chunks = tuple(
        (draw(st.integers(0, 14)), draw(st.integers(0, 3))) for _ in range(n_chunks)
    )
    return Spec(
        chunks=chunks,
        p=draw(st.sampled_from([1, 2, 4, 6])),
        d=draw(st.sampled_from([4, 8])),
        text_head=draw(st.integers(0, 2)),
        text_between=draw(st.booleans()),
        text_tail=draw(st.integers(0, 2)),
        clustered=draw(st.booleans()),
        saliency=draw(st.booleans()) if draw(st.integers(0, 4)) == 0 else True,
    )
