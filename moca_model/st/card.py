"""The model card (README.md) of a sentence-transformers folder written by :mod:`moca_model.export_st`.

Plain text assembly, no heavy imports. The card names the source checkpoint, the prompts, the licence, the
input layout, and what differs from :class:`moca_model.MoCaEncoder` (docs/sentence-transformers.md).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from string import Template

MOCA_CITATION = """@article{chen2025moca,
  title={MoCa: Modality-aware Continual Pre-training Makes Better Bidirectional Multimodal Embeddings},
  author={Chen, Haonan and Liu, Hong and Luo, Yuping and Wang, Liang and Yang, Nan and Wei, Furu and Dou, Zhicheng},
  journal={arXiv preprint arXiv:2506.23115},
  year={2025}
}"""
UNKNOWN_LICENSE = "other"
_HALF_NOTE = ' On a CPU pass `model_kwargs={"dtype": torch.float32}` for MoCaEncoder\'s CPU numbers.'


@dataclass
class CardFacts:
    """What the card states about one export."""

    name: str
    """Folder name of the export (the model's name in the usage example)."""
    source: str
    """The checkpoint it was exported from, as the user named it (hub id or path)."""
    license: str | None
    """SPDX-style licence id, or None when neither the user nor the source recorded one."""
    prompts: dict[str, str]
    """The exported prompts (name -> text)."""
    dim: int
    """Embedding dimension."""
    bidirectional: bool
    """Attention mode written into ``text_config.is_causal``."""
    pooling: str
    """``mean`` or ``last`` (the sentence-transformers Pooling mode ``mean`` / ``lasttoken``)."""
    backbone: str
    """The :mod:`moca_model.backbones` name (``qwen2_5_vl``, ``qwen2_vl``, ``qwen3_vl``)."""
    dtype: str
    """Weight dtype of the export."""
    min_pixels: int
    """Lower pixel bound per image."""
    max_pixels: int
    """Upper pixel bound per image."""
    max_length: int | None
    """Token limit after image expansion (None: no truncation)."""
    versions: dict[str, str]
    """Package versions the export was written and verified with."""


def license_from_readme(path: Path) -> str | None:
    """The ``license:`` field of a README's YAML front matter, or None."""
    if not path.is_file():
        return None
    match = re.match(r"---\n(.*?)\n---", path.read_text(errors="replace"), re.S)
    field = re.search(r"^license:\s*(\S+)\s*$", match.group(1), re.M) if match else None
    return field.group(1).strip("'\"") if field else None


def _front_matter(f: CardFacts) -> str:
    base = [f"base_model: {f.source}"] if re.fullmatch(r"[\w.-]+/[\w.-]+", f.source) else []
    tags = ["sentence-transformers", "feature-extraction", "multimodal", "moca", f.backbone]
    return "\n".join(
        ["---", "library_name: sentence-transformers", "pipeline_tag: sentence-similarity",
         f"license: {f.license or UNKNOWN_LICENSE}", *base, "tags:", *[f"- {t}" for t in tags], "---"]
    )  # fmt: skip


def _prompt_table(prompts: dict[str, str]) -> str:
    rows = [f"| `{name}` | `{json.dumps(text)}` |" for name, text in prompts.items()]
    return "\n".join(["| prompt_name | text (JSON-escaped) |", "|---|---|", *rows])


_CARD = Template("""$front_matter

# $name: MoCa as a sentence-transformers model

Exported from **`$source`** with `python -m moca_model.export_st` ($versions). It loads with stock
sentence-transformers modules (Transformer, Pooling, Normalize) and no remote code, and gives the
embeddings of `moca_model.MoCaEncoder` on this checkpoint (the export checked this on text, image and
image + text inputs before writing the folder).

- **Licence**: $licence.
- **Embedding**: $dim dimensions, $pooling, L2-normalised; cosine.
- **Attention**: $attention. Needs transformers >= 5.2 (checked at load time).
- **Images**: the PIL Qwen2-VL image processor (`use_fast=False`), $min_pixels..$max_pixels pixels
  ($min_tokens..$max_tokens visual tokens) per image; truncation: $limit.
- **Weights**: $dtype.$dtype_note

## Usage

```python
from sentence_transformers import SentenceTransformer, util

model = SentenceTransformer("$name")
pages = model.encode_document(["page1.png", "page2.png"])  # page images: files or PIL images
query = model.encode_query("What is the revenue in 2021?")
print(util.semantic_search(query, pages, top_k=2)[0])
```

`encode_document` is for **page images**: its prompt applies to inputs with an image only, so a text passage
(`model.encode_document(["Revenue grew by 12% in 2021."])`) is encoded as its raw text, as MoCa encodes text
targets. The same holds for the other image prompts (`image`, `image_question`, `image_text`).

## Prompts

MoCa reads an input as: its images (unless its text places them with
`<|vision_start|><|image_pad|><|vision_end|>`, or MMEB's `<|image_1|>`), then the prompt, then the text; a
prompt containing `{text}` wraps the text. No chat markup, no EOS. `encode_query` and `encode_document` use
`query` and `document`. Several images in one input: `{"text": "compare <|image_1|> with <|image_2|>",
"image": [a, b]}` (the same item works in `MoCaEncoder.encode`).

$prompt_table

`query`/`document` are MoCa's ViDoRe setting; `image`, `image_question`, `image_text` are MMEB's wording
for image inputs. For other MMEB tasks pass the task's instruction, e.g.
`prompt="Find me an everyday image that matches the given caption: {text}\\n"`.

## Differences from MoCaEncoder

Same numbers (<= 1e-5 in float32) for text, RGB images and image + text, and for image files. Where they
part, and what to do:

- **EXIF orientation**: an image *file* is turned upright by both. A PIL image carrying an EXIF orientation
  tag is encoded as stored here, and upright by MoCaEncoder (as `datasets` decodes images).
- **Transparency** (RGBA, LA, P with a transparent colour): transformers 5 composites the image onto white;
  MoCaEncoder drops the alpha channel, as the transformers 4.x stack MoCa was trained and evaluated with.
- **Sides under $min_side px**: MoCaEncoder stretches them to $min_side px first; transformers resizes
  directly, which moves the embedding by about 1e-2 to 4e-2.
- **Aspect ratios over 200, 16-bit/float images**: MoCaEncoder pads (white) and rescales them; here
  transformers rejects the first and clips the second. `moca_model.images.to_rgb(image, 0)` prepares any
  image exactly as MoCaEncoder does (needs `moca-toolkit`).
- **Strings**: a string naming an existing image file is read as an image; MoCaEncoder reads strings as text.
  `bytes` are not accepted here; open them with PIL.
- **bfloat16/float16**: sentence-transformers' Pooling returns the mean in the model dtype (MoCaEncoder keeps
  float32), which adds one rounding of that dtype to each embedding.
- **Re-saving**: `model.save()` does not keep `processor_kwargs` (`use_fast: false`); a re-saved copy loads the
  torchvision image processor, which moves image embeddings. Re-export with `moca_model.export_st` instead.
- **Batching**: sentence-transformers sorts by character/pixel count and cuts fixed-size batches; MoCaEncoder
  sorts by token count, cuts padding-bounded batches and encodes duplicates once (see `make bench`).

To get MoCaEncoder's numbers for any RGB, palette, grey, transparent, rotated or small image, prepare it
like MoCaEncoder does (plain PIL):

```python
from PIL import Image, ImageOps


def moca_image(image: Image.Image) -> Image.Image:
    # what MoCaEncoder reads: upright (EXIF), alpha dropped, sides stretched to at least $min_side px
    image = ImageOps.exif_transpose(image).convert("RGB")
    image.info.pop("transparency", None)  # convert() keeps a palette's transparent colour; transformers reads it
    width, height = image.size
    if min(width, height) < $min_side:
        image = image.resize((max(width, $min_side), max(height, $min_side)), Image.Resampling.BICUBIC)
    return image


pages = model.encode_document([moca_image(Image.open(path)) for path in ["page1.png", "page2.png"]])
```

## Citation

```bibtex
$citation
```
""")


_POOLING_TEXT = {"mean": "mean over all tokens (image tokens included)",
                 "last": "the last real token's state (`lasttoken` pooling)"}  # fmt: skip


def _token_pixels(backbone: str) -> int:
    """Pixels per merged visual token: 28² (Qwen2-VL, Qwen2.5-VL) or 32² (Qwen3-VL)."""
    from moca_model import backbones

    return backbones.get(backbone).factor ** 2


def model_card(f: CardFacts) -> str:
    """The README.md text for one export."""
    licence = (
        f"`{f.license}`"
        if f.license
        else f"not recorded in the source checkpoint and not given (`--license`); check the licence of `{f.source}`"
    )
    half = f.dtype != "float32"
    return _CARD.substitute(
        front_matter=_front_matter(f), name=f.name, source=f.source, licence=licence, dim=f.dim,
        versions=", ".join(f"{k} {v}" for k, v in f.versions.items()),
        attention="bidirectional (`text_config.is_causal: false`)" if f.bidirectional else "causal (as trained)",
        min_pixels=f.min_pixels, max_pixels=f.max_pixels, min_tokens=f.min_pixels // _token_pixels(f.backbone),
        max_tokens=f.max_pixels // _token_pixels(f.backbone), min_side=int(_token_pixels(f.backbone) ** 0.5),
        pooling=_POOLING_TEXT[f.pooling], dtype=f.dtype,
        prompt_table=_prompt_table(f.prompts),
        limit=f"{f.max_length} tokens after image expansion" if f.max_length else "none",
        dtype_note=_HALF_NOTE if half else "",
        citation=MOCA_CITATION,
    )  # fmt: skip
