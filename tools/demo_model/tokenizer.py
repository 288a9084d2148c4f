"""A CLIP tokenizer whose domain words are single tokens, for the demo model.

It starts from the byte-level base vocabulary shipped with the tiny models (so any text
still tokenizes) and learns BPE merges over the domain words until every one of them is
one token. Because BPE applies merges in the order they were learned, the learned order
reproduces the training segmentation: each domain word comes out as one token.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from transformers import CLIPTokenizer

from tools.demo_model.shapes import COLOURS, HELD_OUT_SHAPES, POSITION_WORDS, SHAPES, SIZES
from webui.pipelines.tiny import CLIP_TOKENIZER_DIR

SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
EXTRA_WORDS = ("a", "an", "on", "background", "the", "in", "at", "of", "sks", "shape")


def domain_words() -> list[str]:
    """Every word a demo caption can use, sorted."""
    words = set(EXTRA_WORDS) | set(COLOURS) | set(SHAPES) | set(HELD_OUT_SHAPES) | set(SIZES)
    for phrase in POSITION_WORDS.values():
        words.update(phrase.split())
    return sorted(words)


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """BPE merges (most frequent pair first, ties alphabetical) until every word is one symbol."""
    pieces = {word: list(word[:-1]) + [word[-1] + "</w>"] for word in words}
    merges: list[tuple[str, str]] = []
    while any(len(symbols) > 1 for symbols in pieces.values()):
        counts = Counter()
        for symbols in pieces.values():
            for pair in zip(symbols, symbols[1:]):
                counts[pair] += 1
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        for word, symbols in pieces.items():
            merged, index = [], 0
            while index < len(symbols):
                if index + 1 < len(symbols) and (symbols[index], symbols[index + 1]) == best:
                    merged.append(symbols[index] + symbols[index + 1])
                    index += 2
                else:
                    merged.append(symbols[index])
                    index += 1
            pieces[word] = merged
    return merges


def write_tokenizer(folder: Path) -> CLIPTokenizer:
    """Write vocab.json, merges.txt and tokenizer_config.json into ``folder`` and load them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = json.loads((CLIP_TOKENIZER_DIR / "vocab.json").read_text(encoding="utf-8"))
    vocab = [token for token, _ in sorted(base.items(), key=lambda item: item[1]) if token not in SPECIAL_TOKENS]
    merges = learn_merges(domain_words())
    for left, right in merges:
        if left + right not in vocab:
            vocab.append(left + right)
    vocab += list(SPECIAL_TOKENS)
    (folder / "vocab.json").write_text(json.dumps({token: index for index, token in enumerate(vocab)}),
                                       encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                       encoding="utf-8")
    config = json.loads((CLIP_TOKENIZER_DIR / "tokenizer_config.json").read_text(encoding="utf-8"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)
