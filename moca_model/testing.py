"""Offline builders for tiny random MoCa models of every backbone: config, tokenizer, image processor, checkpoint.

Used by ``python -m moca_model.tiny``, by the test suites of every package and by the benchmarks
(the way mteb ships ``mteb/mocks``). Nothing here touches a hub.

The tokenizer is a small byte-level BPE trained in-process on an embedded corpus. It carries Qwen's
special tokens (``<|endoftext|>`` as pad/EOS, ``<|vision_start|>``, ``<|image_pad|>``, ...) as added
special tokens, so their roles are the real ones while their ids are small; the model config records
those ids (``image_token_id`` and friends), exactly as a real Qwen2.5-VL config records 151655 etc.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moca_model.backbones import DEFAULT_BACKBONE

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerFast

# Qwen2.5-VL's added tokens, in the order of their real ids (151643 ...).
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

_CORPUS = """
Represent the given image. Represent the given document image. Find me an everyday image that matches
the given caption. Represent the given image with the following question. Identify the object shown in
the image. Select the portion of the image that isolates the object labeled as. Retrieve an image of
this news caption. Find a caption for the news in the given photo. What is the total revenue in 2021?
The quick brown fox jumps over the lazy dog. A red circle on the left, a blue square at the top, a
green triangle at the bottom right. digit zero one two three four five six seven eight nine.
Annual report: energy, economics, biomedical lectures, environmental social governance, tables,
figures, charts. Le rapport annuel, die Tabelle, el documento, 0123456789 %$#@!?.,;:()[]{}
"""


def tiny_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A deterministic byte-level BPE tokenizer with Qwen's special tokens appended after the vocab.

    Args:
        vocab_size: size of the BPE vocabulary before the special tokens.

    Returns:
        A fast tokenizer whose pad and EOS token is ``<|endoftext|>``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]),
    )
    fast.padding_side = "right"
    return fast


def tiny_config(
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden: int = 64,
    layers: int = 2,
    vision_depth: int = 2,
    backbone: str = DEFAULT_BACKBONE,
) -> PretrainedConfig:
    """A tiny config of ``backbone`` (4 heads / 2 KV heads, FFN 4x, vision hidden 64).

    Args:
        tokenizer: the tokenizer whose special-token ids the config must record.
        hidden: text hidden size (head_dim is hidden / 4).
        layers: number of text decoder layers.
        vision_depth: number of ViT blocks (Qwen2.5-VL: the last one uses full attention; Qwen3-VL:
            DeepStack taps the first ``min(3, depth, layers)``).
        backbone: ``qwen2_vl``, ``qwen2_5_vl`` or ``qwen3_vl``.

    Returns:
        The backbone's config class, with its real patch geometry (14 or 16 px, merge 2, temporal patch 2).
    """
    vision = {"depth": vision_depth, "hidden_size": 64, "intermediate_size": 128, "num_heads": 4}
    return random_config(
        tokenizer,
        hidden=hidden,
        layers=layers,
        heads=4,
        kv_heads=2,
        intermediate=4 * hidden,
        vision=vision,
        backbone=backbone,
    )


def random_config(
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden: int,
    layers: int,
    heads: int,
    kv_heads: int,
    intermediate: int,
    vision: dict,
    vocab_size: int | None = None,
    backbone: str = DEFAULT_BACKBONE,
) -> PretrainedConfig:
    """A config of any size and backbone whose special-token ids are the tokenizer's.

    Args:
        tokenizer: source of the special-token ids.
        hidden: text hidden size.
        layers: text decoder layers.
        heads: attention heads.
        kv_heads: key/value heads.
        intermediate: text FFN size.
        vision: ViT fields (``depth``, ``hidden_size``, ``intermediate_size``, ``num_heads``, and the
            backbone's own options; see each backbone module's ``random_config``).
        vocab_size: embedding rows (default ``len(tokenizer)``).
        backbone: ``qwen2_vl``, ``qwen2_5_vl`` or ``qwen3_vl``.

    Returns:
        The config, with each backbone's mRoPE proportions.
    """
    from moca_model import backbones

    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in QWEN_SPECIAL_TOKENS}
    size = backbones.ModelSize(hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads, intermediate=intermediate,
                               vision=vision, vocab_size=vocab_size or len(tokenizer))  # fmt: skip
    return backbones.module(backbone).random_config(ids, size)


def count_live_batches(encoder, key: str = "input_ids") -> list[int]:
    """Instrument ``encoder`` (a MoCaEncoder without a device pool): the returned list gets, at each forward
    pass, how many prepared batches are alive (tracked by a weak reference to each batch's ``key`` tensor).

    For tests and benchmarks of bounded memory (issue 24): a call must not keep every prepared batch.
    """  # noqa: D205
    import weakref

    refs: list = []
    live: list[int] = []
    prepare, forward = encoder.prepare_batch, encoder.forward_batch

    def counting_prepare(entries):
        batch = prepare(entries)
        refs.append(weakref.ref(batch[key]))
        return batch

    def counting_forward(inputs):
        live.append(sum(r() is not None for r in refs))
        return forward(inputs)

    encoder.prepare_batch, encoder.forward_batch = counting_prepare, counting_forward
    return live
