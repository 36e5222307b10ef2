"""A completion's text is one rule on every side (ml/prompts.py): a NUL byte a model emits arrives
as U+FFFD, so an honest trace is storable and still decodes to exactly what the worker sent."""

from __future__ import annotations

from bench.worker_gpu import build_tokenizer
from ml.prompts import decode_completion


def test_a_nul_byte_decodes_to_the_replacement_character() -> None:
    tokenizer = build_tokenizer(600)
    ids = tokenizer("a\x00b", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == "a\x00b"  # the byte-level token really is a NUL
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert decode_completion(tokenizer, [*ids, stop], {stop}) == "a\ufffdb"
    assert decode_completion(tokenizer, ids, {stop}) == "a\ufffdb"
