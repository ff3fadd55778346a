"""How a corpus's token ids read, from its spec alone (no data is loaded): UTF-8 bytes for text corpora,
raster-order grey levels of an image for pixel corpora, plain ids otherwise. `smt generate` encodes prompts
and prints or draws samples with it; `smt export` stores it beside the student."""
from __future__ import annotations

from pipeline.corpora.spec import parse_spec
from storage.export import TokenFormat

IMAGE_SHAPES = {"digits": (8, 8), "mnist": (28, 28)}
"""(height, width) of the images of each pixel corpus (one token per pixel, raster order)."""
BYTE_CORPORA = ("text", "hf")


def token_format(spec: str, vocab_size: int) -> TokenFormat:
    """The `TokenFormat` of corpus `spec` for a model with `vocab_size` token ids."""
    name, _, _ = parse_spec(spec)
    if name in BYTE_CORPORA:
        return TokenFormat(unit="byte", vocab_size=vocab_size, corpus=spec)
    if name in IMAGE_SHAPES:
        h, w = IMAGE_SHAPES[name]
        return TokenFormat(unit="pixel", vocab_size=vocab_size, height=h, width=w, corpus=spec)
    return TokenFormat(unit="token", vocab_size=vocab_size, corpus=spec)
