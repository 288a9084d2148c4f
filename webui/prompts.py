"""AUTOMATIC1111 prompt syntax and long prompts, turned into embeddings with ``compel``.

The syntax (as in A1111's "attention/emphasis"):

* ``(words)`` multiplies the attention to *words* by 1.1, ``((words))`` by 1.21, and so on;
  ``[words]`` divides it by 1.1; ``(words:1.5)`` sets an explicit multiplier.  Nested groups
  multiply.
* ``\\(`` ``\\)`` ``\\[`` ``\\]`` and ``\\\\`` are literal characters.
* Unbalanced brackets are tolerated the way A1111 tolerates them: a group left open runs to
  the end of the prompt, a closing bracket with nothing to close is literal text, and
  ``:1.5)`` with no open round bracket is literal text too.
* ``BREAK`` (upper case, a word of its own) ends the current 75-token chunk: the text after it
  starts a new chunk of the text encoder.

How a prompt becomes embeddings:

1. :func:`parse_emphasis` (our own parser; A1111's code is AGPL and is not used) gives a list
   of ``(text, weight)`` fragments.
2. The fragments go to compel's :class:`compel.EmbeddingsProvider` as they are
   (``get_embeddings_for_weighted_prompt_fragments``).  We do *not* round-trip through
   compel's own prompt language: its parser rewrites whitespace (``"1,000"`` becomes
   ``"1, 000"``), keeps the backslash of ``\\+`` ``\\-`` ``\\=`` escapes in the text it sends to
   the tokenizer, and reads ``C++`` as "C, weight 1.21".  :func:`to_compel_syntax` is there
   for interoperability (for people who use compel or InvokeAI directly).
3. compel applies the weights its own way: a weight above 1 pushes that token's embedding
   away from the embedding of the empty prompt (``empty + (z - empty) * w``), so only the
   weighted tokens change; a weight below 1 blends the whole prompt towards the same prompt
   with those tokens masked out (so the tokens *after* the down-weighted span change too).
   Weights of 0 or less all mean "as good as absent" (compel cannot invert a concept).
   Each down-weighted span costs one more text-encoder pass.
4. Prompts longer than the tokenizer's ``model_max_length`` (77) are cut into chunks of 75
   tokens plus BOS/EOS (at sentence/phrase/word boundaries where possible), each encoded on
   its own and concatenated: the embeddings are ``77 * n`` long.  ``BREAK`` starts a new
   chunk.  The positive and negative embeddings are padded (with the embedding of the empty
   prompt, compel's ``pad_conditioning_tensors_to_same_length``) to the same length.

Per family (``encode_prompts``):

* ``sd1`` / ``sd2``: ``text_encoder`` last hidden state (what the pipeline uses).  Weighting,
  long prompts and BREAK.
* ``sdxl``: penultimate hidden states of both text encoders, concatenated along the feature
  axis; pooled embeddings from ``text_encoder_2``.  Weighting, long prompts and BREAK.
* ``sdxl-refiner``: the same with ``text_encoder_2`` only (``pipe.text_encoder`` is None).
* ``sd3``: compel has no SD3 wrapper, so we assemble SD3's conditioning ourselves from compel
  providers, exactly like ``StableDiffusion3Pipeline.encode_prompt``: CLIP-L and CLIP-G
  penultimate states (77 tokens each, truncated like the pipeline does), zero-padded to the T5
  width, then the T5 embeddings (``max_sequence_length`` tokens, 256 by default) appended along
  the sequence axis.  Weights are applied in all three encoders; long prompts are carried by
  T5 (CLIP sees the first 75 tokens, as in diffusers); ``BREAK`` is only a separator.
* Pooled embeddings (SDXL, refiner, SD3) are taken from the prompt text with the syntax
  stripped, *without* weights (compel does not weight pooled outputs either).
* Multi-vector textual-inversion tokens (``tok`` -> ``tok tok_1 ...``) are expanded per
  tokenizer, as diffusers' ``maybe_convert_prompt`` does.  A LoRA ``scale`` for the text
  encoders (``cross_attention_kwargs``) and ``clip_skip`` are not applied here.

Where no syntax is used and the prompt fits in one chunk, the embeddings equal the pipeline's
own ``encode_prompt`` output; the app still passes such prompts as plain strings
(:func:`needs_embeddings` is False for them) so images stay bit-identical with bare diffusers.

Not handled here: A1111 prompt editing/alternation (``[a:b:0.5]``, ``[a|b]``), ``AND``
(composable diffusion) and extra networks (``<lora:...>``); they reach the text encoder as
text (after the bracket rules above).
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from webui.pipelines.families import FAMILIES, family_spec

__all__ = [
    "BREAK",
    "BREAK_WEIGHT",
    "FAMILIES",
    "parse_emphasis",
    "strip_emphasis",
    "to_compel_syntax",
    "needs_embeddings",
    "encode_prompts",
]

#: Text of the fragment that :func:`parse_emphasis` returns for the ``BREAK`` keyword; its
#: weight is :data:`BREAK_WEIGHT` (-1, as in A1111).
BREAK = "BREAK"
BREAK_WEIGHT = -1.0

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1

_BREAK_RE = re.compile(r"\s*\bBREAK\b\s*")
# ":<number>)" closing a round group with an explicit weight (spaces allowed around the number).
_EXPLICIT_WEIGHT_RE = re.compile(r":\s*([+-]?[.\d]+)\s*\)")
_ESCAPABLE = "()[]\\"


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------


def parse_emphasis(text: str) -> list[tuple[str, float]]:
    """Split an A1111 prompt into ``(text, weight)`` fragments.

    ``"a (cat:1.5) on [a mat]"`` -> ``[("a ", 1.0), ("cat", 1.5), (" on ", 1.0),
    ("a mat", 0.909...)]``.  ``(x)`` multiplies by 1.1, ``[x]`` divides by 1.1, ``(x:w)`` sets
    ``w``; nested groups multiply.  ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are literal; a lone
    backslash is dropped (as in A1111).  Brackets left open apply to the end of the prompt;
    closing brackets with nothing to close are literal text.  ``BREAK`` gives a
    ``(BREAK, BREAK_WEIGHT)`` marker (not scaled by enclosing brackets).  Neighbouring
    fragments with the same weight are merged; empty text is dropped, except that an empty
    prompt gives ``[("", 1.0)]``.
    """
    parts: list[list[Any]] = []  # [text, weight, is_break]
    round_open: list[int] = []
    square_open: list[int] = []
    pending: list[str] = []

    def flush() -> None:
        if not pending:
            return
        run = "".join(pending)
        pending.clear()
        pieces = _BREAK_RE.split(run)
        for index, piece in enumerate(pieces):
            if index:
                parts.append([BREAK, BREAK_WEIGHT, True])
            if piece:
                parts.append([piece, 1.0, False])

    def scale_from(start: int, factor: float) -> None:
        flush()
        for part in parts[start:]:
            if not part[2]:
                part[1] *= factor

    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            if i + 1 < n and text[i + 1] in _ESCAPABLE:
                pending.append(text[i + 1])
                i += 2
            else:
                i += 1  # a lone backslash is dropped, as in A1111
            continue
        if ch == "(":
            flush()
            round_open.append(len(parts))
        elif ch == "[":
            flush()
            square_open.append(len(parts))
        elif ch == ":":
            match = _EXPLICIT_WEIGHT_RE.match(text, i)
            weight = _to_float(match.group(1)) if match else None
            if match and weight is not None and round_open:
                scale_from(round_open.pop(), weight)
                i = match.end()
                continue
            if match and weight is not None:
                pending.append(match.group(0))  # ":1.5)" with nothing to close: literal
                i = match.end()
                continue
            pending.append(ch)
        elif ch == ")" and round_open:
            scale_from(round_open.pop(), ROUND_MULTIPLIER)
        elif ch == "]" and square_open:
            scale_from(square_open.pop(), SQUARE_MULTIPLIER)
        else:
            pending.append(ch)
        i += 1
    flush()
    # Groups left open run to the end of the prompt.
    for start in round_open:
        scale_from(start, ROUND_MULTIPLIER)
    for start in square_open:
        scale_from(start, SQUARE_MULTIPLIER)

    merged: list[list[Any]] = []
    for part in parts:
        if merged and not part[2] and not merged[-1][2] and merged[-1][1] == part[1]:
            merged[-1][0] += part[0]
        else:
            merged.append(part)
    if not merged:
        return [("", 1.0)]
    return [(str(t), float(w)) for t, w, _ in merged]


def _to_float(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _segments(text: str | None) -> list[list[tuple[str, float]]]:
    """Fragments of ``text``, split at BREAK into segments (each at least one fragment)."""
    segments: list[list[tuple[str, float]]] = [[]]
    for fragment, weight in parse_emphasis(text or ""):
        if fragment == BREAK and weight == BREAK_WEIGHT:
            segments.append([])
        else:
            segments[-1].append((fragment, weight))
    return [segment or [("", 1.0)] for segment in segments]


def strip_emphasis(text: str) -> str:
    """The prompt text with the emphasis syntax removed (``BREAK`` becomes a space).

    ``"a (cat:1.5) BREAK on [a mat]"`` -> ``"a cat on a mat"``.  Used for pooled embeddings.
    """
    return " ".join("".join(fragment for fragment, _ in segment) for segment in _segments(text)).strip()


def _has_syntax(text: str | None) -> bool:
    text = text or ""
    return parse_emphasis(text) != [(text, 1.0)]


# --------------------------------------------------------------------------------------------
# compel syntax
# --------------------------------------------------------------------------------------------

# Characters compel's grammar gives a meaning to (see compel.prompt_parser.build_parser_syntax).
_COMPEL_SYNTAX_CHARS = set('()",.+-=')


def _format_weight(weight: float) -> str:
    formatted = f"{weight:.6f}".rstrip("0").rstrip(".")
    return "0" if formatted in ("", "-0") else formatted


def _escape_for_compel(text: str, inside_group: bool) -> str:
    """Escape ``text`` so that compel's parser reads it as plain text.

    ``(`` ``)`` ``"`` are always escaped (compel removes those backslashes).  ``+``/``-`` are
    escaped only where compel would read them as a weight (after a word, before whitespace,
    the end or another syntax character), and ``=`` only inside a weighted group, because
    compel keeps the backslash of ``\\+`` ``\\-`` ``\\=`` in the text.
    """
    out: list[str] = []  # built right to left
    for index in range(len(text) - 1, -1, -1):
        ch = text[index]
        following = out[-1][0] if out else ""
        if ch in '()"':
            out.append("\\" + ch)
        elif ch == "=" and inside_group:
            out.append("\\=")
        elif ch in "+-":
            ends_word = following == "" or following.isspace() or following in _COMPEL_SYNTAX_CHARS
            # outside groups compel takes a lone run ("a -- b") as a literal word
            if ends_word and (inside_group or not _run_is_standalone(text, index)):
                out.append("\\" + ch)
            else:
                out.append(ch)
        else:
            out.append(ch)
    return "".join(reversed(out))


def _run_is_standalone(text: str, index: int) -> bool:
    """True when the run of ``+``/``-`` around ``index`` is a word of its own (``" -- "``)."""
    start = index
    while start > 0 and text[start - 1] in "+-":
        start -= 1
    end = index
    while end + 1 < len(text) and text[end + 1] in "+-":
        end += 1
    before = text[start - 1] if start > 0 else ""
    after = text[end + 1] if end + 1 < len(text) else ""
    return (before == "" or before.isspace()) and (after == "" or after.isspace())


def _render_compel(fragments: list[tuple[str, float]]) -> str:
    out = ""
    after_group = False
    for fragment, weight in fragments:
        weighted = weight != 1.0 and bool(fragment.strip())
        # compel needs whitespace before "(" (else "a(b)1.2" is one literal word) and after the
        # number (else "(b)1.2" followed by "3" reads as weight 1.23).
        needs_space = (weighted or after_group) and out and not out[-1].isspace() and not fragment[:1].isspace()
        if needs_space:
            out += " "
        if weighted:
            lead = fragment[: len(fragment) - len(fragment.lstrip())]
            trail = fragment[len(fragment.rstrip()):]
            core = _escape_for_compel(fragment.strip(), inside_group=True)
            out += f"{lead}({core}){_format_weight(weight)}{trail}"
        else:
            out += _escape_for_compel(fragment, inside_group=False)
        after_group = weighted
    return out.strip()


def to_compel_syntax(text: str) -> str:
    """Convert an A1111 prompt to compel's prompt language.

    ``"a (cat:1.5) on [a mat]"`` -> ``"a (cat)1.5 on (a mat)0.909091"``.  Weighted spans
    become ``(text)weight``; ``BREAK`` becomes compel's conjunction
    ``("part 1", "part 2").and()`` (compel encodes each part separately and concatenates
    them, which is what BREAK does).  Characters that mean something to compel are escaped
    so that plain text stays plain: ``(`` ``)`` ``"`` always, ``+``/``-`` where compel would
    read them as weights (``C++`` -> ``C+\\+``), ``=`` inside weighted spans.

    Known limits of compel's own parser (why :func:`encode_prompts` does not use this
    string): it normalises whitespace (joins fragments with single spaces, puts a space after
    every comma and around periods inside groups), and it keeps the backslash of ``\\+``
    ``\\-`` ``\\=`` in the text it hands to the tokenizer.
    """
    segments = _segments(text)
    rendered = [_render_compel(segment) for segment in segments]
    if len(rendered) == 1:
        return rendered[0]
    quoted = ", ".join(f'"{part}"' for part in rendered)
    return f"({quoted}).and()"


# --------------------------------------------------------------------------------------------
# Deciding whether embeddings are needed
# --------------------------------------------------------------------------------------------


def _is_sd3(pipe: Any) -> bool:
    return getattr(pipe, "tokenizer_3", None) is not None or "text_encoder_3" in getattr(pipe, "components", {})


def _token_count(tokenizer: Any, text: str) -> int:
    ids = tokenizer(text, truncation=False, add_special_tokens=True, verbose=False)["input_ids"]
    return len(ids)


def needs_embeddings(pipe: Any, prompt: str | None, negative_prompt: str | None) -> bool:
    """True when the prompts must go through :func:`encode_prompts` rather than as strings.

    That is when the prompt or the negative prompt uses the emphasis syntax (brackets,
    escapes, ``BREAK``), or is longer than a CLIP tokenizer's ``model_max_length`` tokens
    (diffusers would truncate it).  For SD3 length alone does not count: the pipeline already
    lets T5 carry long prompts (``max_sequence_length``), and our embeddings would be the same.
    """
    if _has_syntax(prompt) or _has_syntax(negative_prompt):
        return True
    if _is_sd3(pipe):
        return False
    tokenizers = [t for t in (getattr(pipe, "tokenizer", None), getattr(pipe, "tokenizer_2", None)) if t is not None]
    for text in (prompt or "", negative_prompt or ""):
        if not text:
            continue
        for tokenizer in tokenizers:
            if _token_count(tokenizer, text) > tokenizer.model_max_length:
                return True
    return False


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


class _MultiVectorTextualInversion:
    """Expands multi-vector textual-inversion tokens (``tok`` -> ``tok tok_1 tok_2 ...``).

    Same rule as diffusers' ``TextualInversionLoaderMixin.maybe_convert_prompt``, but on token
    ids of one tokenizer (compel's ``DiffusersTextualInversionManager`` always uses
    ``pipe.tokenizer`` and re-tokenizes decoded text).  A no-op without added tokens.
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def expand_textual_inversion_token_ids_if_necessary(self, token_ids: list[int]) -> list[int]:
        added = self.tokenizer.get_added_vocab()
        if not added or not token_ids:
            return token_ids
        expanded: list[int] = []
        for token_id in token_ids:
            expanded.append(token_id)
            token = self.tokenizer.convert_ids_to_tokens(token_id)
            k = 1
            while f"{token}_{k}" in added:
                expanded.append(added[f"{token}_{k}"])
                k += 1
        return expanded


def _execution_device(module: torch.nn.Module) -> torch.device:
    try:
        from diffusers.utils.torch_utils import get_module_execution_device
    except ImportError:  # older diffusers
        return next(module.parameters()).device
    return get_module_execution_device(module)


def _compel(tokenizer: Any, text_encoder: Any, embeddings_type: Any, *, chunked: bool,
            max_length: int | None = None) -> Any:
    from compel import Compel, SplitLongTextMode

    # compel's manager type is an ABC, but it only ever calls the one method.
    manager = _MultiVectorTextualInversion(tokenizer)
    return Compel(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        textual_inversion_manager=manager,  # type: ignore[arg-type]
        truncate_long_prompts=not chunked,
        returned_embeddings_type=embeddings_type,
        padding_attention_mask_value=1,
        split_long_text_mode=SplitLongTextMode.SENTENCES,
        device=str(_execution_device(text_encoder)),
        model_max_length=max_length,
    )


def _encode_segment(compel: Any, segment: list[tuple[str, float]]) -> torch.Tensor:
    provider = compel.conditioning_provider
    # compel cannot place a down-weighted fragment that tokenizes to nothing (it crashes on
    # the missing token range), and such fragments contribute nothing anyway.
    kept = [(t, w) for t, w in segment
            if provider.get_token_ids([t], include_start_and_end_markers=False)[0]]
    if not kept:
        kept = [("", 1.0)]
    texts = [t for t, _ in kept]
    weights = [float(w) for _, w in kept]
    return provider.get_embeddings_for_weighted_prompt_fragments(
        text_batch=[texts], fragment_weights_batch=[weights], device=compel.device)


def _encode_text(compel: Any, text: str | None, *, use_break: bool) -> torch.Tensor:
    segments = _segments(text)
    if not use_break:
        segments = [[fragment for segment in segments for fragment in segment]]
    with torch.no_grad():
        parts = [_encode_segment(compel, segment) for segment in segments]
    return torch.cat(parts, dim=1)


def _pad_pair(compel: Any, positive: torch.Tensor, negative: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        positive, negative = compel.pad_conditioning_tensors_to_same_length([positive, negative])
    return positive, negative


def _pad_to(compel: Any, embeds: torch.Tensor, length: int) -> torch.Tensor:
    """Append empty-prompt chunks until ``embeds`` is ``length`` tokens long."""
    if embeds.shape[1] >= length:
        return embeds
    with torch.no_grad():
        empty = compel.conditioning_provider.empty_z.to(embeds.device, embeds.dtype)
    while embeds.shape[1] < length:
        embeds = torch.cat([embeds, empty.expand(embeds.shape[0], -1, -1)], dim=1)
    return embeds


def _pooled(compel: Any, text: str | None) -> torch.Tensor:
    with torch.no_grad():
        return compel.conditioning_provider.get_pooled_embeddings([strip_emphasis(text or "")], device=compel.device)


def _encode_clip_family(pipe: Any, family: str, prompt: str, negative_prompt: str | None) -> dict[str, torch.Tensor]:
    from compel import ReturnedEmbeddingsType

    encoding = family_spec(family).text_encoding
    if encoding == "clip":
        encoders = [(pipe.tokenizer, pipe.text_encoder, ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED)]
    else:
        penultimate = ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED
        encoders = [(pipe.tokenizer_2, pipe.text_encoder_2, penultimate)]
        if encoding == "clip-pair" and pipe.text_encoder is not None:
            encoders.insert(0, (pipe.tokenizer, pipe.text_encoder, penultimate))
    compels = [_compel(tok, enc, kind, chunked=True) for tok, enc, kind in encoders]

    positives, negatives = [], []
    for compel in compels:
        positive, negative = _pad_pair(compel, _encode_text(compel, prompt, use_break=True),
                                       _encode_text(compel, negative_prompt, use_break=True))
        positives.append(positive)
        negatives.append(negative)
    # Two tokenizers could chunk one prompt differently: bring every encoder to one length.
    length = max(t.shape[1] for t in positives)
    positives = [_pad_to(c, t, length) for c, t in zip(compels, positives)]
    negatives = [_pad_to(c, t, length) for c, t in zip(compels, negatives)]
    result = {
        "prompt_embeds": torch.cat(positives, dim=-1),
        "negative_prompt_embeds": torch.cat(negatives, dim=-1),
    }
    if encoding in ("clip-pair", "clip-g"):
        pooled_compel = compels[-1]  # text_encoder_2
        result["pooled_prompt_embeds"] = _pooled(pooled_compel, prompt)
        result["negative_pooled_prompt_embeds"] = _pooled(pooled_compel, negative_prompt)
        # Like the pipeline (and the app's plain-string path, which passes None for ""):
        # an empty negative prompt gives zeros when the model asks for it (SDXL base).
        if not negative_prompt and getattr(pipe.config, "force_zeros_for_empty_prompt", False):
            result["negative_prompt_embeds"] = torch.zeros_like(result["negative_prompt_embeds"])
            result["negative_pooled_prompt_embeds"] = torch.zeros_like(result["negative_pooled_prompt_embeds"])
    return result


def _encode_sd3(pipe: Any, prompt: str, negative_prompt: str | None, max_sequence_length: int) -> dict[str, torch.Tensor]:
    from compel import ReturnedEmbeddingsType

    penultimate = ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED
    clip_max = pipe.tokenizer.model_max_length if pipe.tokenizer is not None else 77
    clips = [_compel(pipe.tokenizer, pipe.text_encoder, penultimate, chunked=False, max_length=clip_max),
             _compel(pipe.tokenizer_2, pipe.text_encoder_2, penultimate, chunked=False, max_length=clip_max)]
    t5 = None
    if pipe.text_encoder_3 is not None:
        # T5's last_hidden_state is already layer-normed: compel's LAST_HIDDEN_STATES_NORMALIZED.
        t5 = _compel(pipe.tokenizer_3, pipe.text_encoder_3, ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED,
                     chunked=False, max_length=max_sequence_length)

    def encode(text: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        clip_embeds = torch.cat([_encode_text(c, text, use_break=False) for c in clips], dim=-1)
        pooled = torch.cat([_pooled(c, text) for c in clips], dim=-1)
        if t5 is not None:
            t5_embeds = _encode_text(t5, text, use_break=False)
        else:  # what the pipeline does without T5
            t5_embeds = torch.zeros((1, max_sequence_length, pipe.transformer.config.joint_attention_dim),
                                    device=clip_embeds.device, dtype=clip_embeds.dtype)
        t5_embeds = t5_embeds.to(clip_embeds.device)
        clip_embeds = torch.nn.functional.pad(clip_embeds, (0, t5_embeds.shape[-1] - clip_embeds.shape[-1]))
        return torch.cat([clip_embeds, t5_embeds], dim=-2), pooled

    embeds, pooled = encode(prompt)
    negative_embeds, negative_pooled = encode(negative_prompt)
    return {
        "prompt_embeds": embeds,
        "negative_prompt_embeds": negative_embeds,
        "pooled_prompt_embeds": pooled,
        "negative_pooled_prompt_embeds": negative_pooled,
    }


def encode_prompts(pipe: Any, family: str, prompt: str, negative_prompt: str | None, *,
                   max_sequence_length: int = 256) -> dict[str, torch.Tensor]:
    """Encode an A1111-syntax prompt pair into keyword arguments for the diffusers pipeline.

    Pass the result to the pipeline call *instead of* ``prompt=``/``negative_prompt=``:

    * ``sd1``/``sd2``: ``prompt_embeds``, ``negative_prompt_embeds``;
    * ``sdxl``, ``sdxl-refiner``, ``sd3``: also ``pooled_prompt_embeds``,
      ``negative_pooled_prompt_embeds``.

    Each tensor has batch size 1 (the pipeline repeats it for ``num_images_per_prompt``).
    For the CLIP families the sequence length is a multiple of the tokenizer's
    ``model_max_length`` (77), the same for prompt and negative; for SD3 it is
    ``77 + max_sequence_length`` (keep ``max_sequence_length`` equal to what you would pass
    the pipeline).  An empty or None negative prompt on an SDXL base model with
    ``force_zeros_for_empty_prompt`` gives zero negative embeddings, as in diffusers.
    See the module docstring for how weights, long prompts and BREAK are handled per family.

    Raises:
        ValueError: ``family`` is not one of :data:`FAMILIES`.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; expected one of {FAMILIES}")
    if family_spec(family).text_encoding == "sd3":
        result = _encode_sd3(pipe, prompt, negative_prompt, max_sequence_length)
    else:
        result = _encode_clip_family(pipe, family, prompt, negative_prompt)
    # With offloading the encoders may have left their outputs on different devices.
    device = getattr(pipe, "_execution_device", None)
    if device is not None:
        result = {key: value.to(device) for key, value in result.items()}
    return result
