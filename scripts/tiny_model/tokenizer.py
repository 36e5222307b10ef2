"""A byte-level tokenizer without merges (one token per byte) and a ChatML-style chat template.

One token per byte keeps every digit its own token, which column arithmetic needs. The pipeline is
the one transformers' `Qwen2Tokenizer` rebuilds around a Qwen2 checkpoint's vocabulary (NFC, the
Qwen2 split pattern, byte-level mapping), so the tokenizer encodes the same whether a transformers
release loads tokenizer.json as written or through that class.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PAD = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (PAD, IM_START, IM_END)
MAX_LENGTH = 512
QWEN2_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# System messages are left out: the model was never trained on them, and arithmetic prompts need none.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] != 'system' -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def byte_symbols() -> list[str]:
    """The printable stand-in of each byte value 0..255, as byte-level BPE vocabularies spell them."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = iter(range(256, 512))
    return [chr(b) if b in kept else chr(next(shifted)) for b in range(256)]


def build_tokenizer() -> PreTrainedTokenizerBase:
    """The tokenizer, ready for ``save_pretrained``; the end of an answer is ``<|im_end|>``."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate((*SPECIAL_TOKENS, *byte_symbols()))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=IM_END,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
        model_max_length=MAX_LENGTH,
        clean_up_tokenization_spaces=False,
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, out: Path) -> None:
    """Save in the Hugging Face layout, readable by transformers 4.x as well as 5.x.

    Newer releases keep the template in a separate file; older ones read it from
    tokenizer_config.json, so it is written to both.
    """
    tokenizer.save_pretrained(str(out))
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "Qwen2Tokenizer"
    config["chat_template"] = CHAT_TEMPLATE
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    special = {"eos_token": IM_END, "pad_token": PAD}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def check_reload(tokenizer: PreTrainedTokenizerBase, out: Path, texts: Sequence[str]) -> None:
    """Fail unless ``AutoTokenizer`` reads ``out`` back into a tokenizer that encodes ``texts`` the same."""
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(str(out))
    for text in texts:
        expected = tokenizer(text, add_special_tokens=False)["input_ids"]
        if loaded(text, add_special_tokens=False)["input_ids"] != expected:
            kind = type(loaded).__name__
            raise RuntimeError(f"{out} reloads as a {kind} that encodes {text!r} differently")
    if render_prompt(loaded, "What is 1 + 1?") != render_prompt(tokenizer, "What is 1 + 1?"):
        raise RuntimeError(f"{out} reloads with a different chat template")


def render_prompt(tokenizer: PreTrainedTokenizerBase, question: str) -> str:
    """The prompt exactly as workers render it: the chat template with the generation prompt."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    if not isinstance(text, str):
        raise TypeError("chat template rendered no text")
    return text
