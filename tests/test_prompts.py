"""Tests for webui.prompts: A1111 emphasis syntax, compel syntax, prompt embeddings."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import re  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from compel import Compel  # noqa: E402

from webui.pipelines.tiny import build_tiny_pipeline  # noqa: E402
from webui.prompts import (  # noqa: E402
    BREAK,
    BREAK_WEIGHT,
    encode_prompts,
    needs_embeddings,
    parse_emphasis,
    strip_emphasis,
    to_compel_syntax,
)

FAMILY_OF = {"tiny": "sd1", "tiny-sd2": "sd2", "tiny-sdxl": "sdxl", "tiny-sdxl-refiner": "sdxl-refiner",
             "tiny-sd3": "sd3"}

# The tiny tokenizer is byte-level (about one token per character): this is > 77 tokens.
LONG = ("a highly detailed photograph of a red fox sitting in tall grass at sunset, golden light, "
        "soft bokeh, sharp focus, award winning")


def approx(fragments):
    return [(text, pytest.approx(weight)) for text, weight in fragments]


@pytest.fixture(scope="module")
def pipes():
    cache = {}

    def get(name):
        if name not in cache:
            pipe = build_tiny_pipeline(name)
            pipe.set_progress_bar_config(disable=True)
            cache[name] = pipe
        return cache[name]

    return get


# --------------------------------------------------------------------------------------------
# parse_emphasis
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("normal text", [("normal text", 1.0)]),
    ("", [("", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("((word))", [("word", 1.21)]),
    ("(((word)))", [("word", 1.331)]),
    ("[word]", [("word", 1 / 1.1)]),
    ("[[word]]", [("word", 1 / 1.21)]),
    ("(word:1.5)", [("word", 1.5)]),
    ("(word: 0.25 )", [("word", 0.25)]),
    ("((word:1.5))", [("word", 1.65)]),
    ("[(word:1.5)]", [("word", 1.5 / 1.1)]),
    ("(a (b) c:2)", [("a ", 2.0), ("b", 2.2), (" c", 2.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    # the example from A1111's docstring
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.573), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
      (", sun, ", 1.1), ("sky", 1.4641), (".", 1.1)]),
])
def test_parse_weights_and_nesting(text, expected):
    assert parse_emphasis(text) == approx(expected)


@pytest.mark.parametrize("text, expected", [
    (r"\(literal\]", [("(literal]", 1.0)]),
    (r"\[x\] \(y\)", [("[x] (y)", 1.0)]),
    (r"C:\\path", [("C:\\path", 1.0)]),
    (r"a\b", [("ab", 1.0)]),  # a lone backslash is dropped, as in A1111
    (r"(\(x\):1.2)", [("(x)", 1.2)]),
])
def test_parse_escapes(text, expected):
    assert parse_emphasis(text) == approx(expected)


@pytest.mark.parametrize("text, expected", [
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("a [b", [("a ", 1.0), ("b", 1 / 1.1)]),
    ("a ) b ]", [("a ) b ]", 1.0)]),
    ("smile :)", [("smile :)", 1.0)]),
    ("[a:1.5)", [("a:1.5)", 1 / 1.1)]),  # ":1.5)" closes only a round bracket
    ("a:1.5) b", [("a:1.5) b", 1.0)]),
    ("(a:1.2.3)", [("a:1.2.3", 1.1)]),  # not a number: literal, then ")" closes at 1.1
    ("(a:b)", [("a:b", 1.1)]),
    ("()", [("", 1.0)]),
])
def test_parse_unbalanced_and_odd(text, expected):
    assert parse_emphasis(text) == approx(expected)


def test_parse_break():
    assert parse_emphasis("a cat BREAK a dog") == [("a cat", 1.0), (BREAK, BREAK_WEIGHT), ("a dog", 1.0)]
    # BREAK inside brackets is still a break, and is not scaled
    assert parse_emphasis("(a BREAK b)") == approx([("a", 1.1), (BREAK, BREAK_WEIGHT), ("b", 1.1)])
    # only the upper-case word on its own
    assert parse_emphasis("a break b") == [("a break b", 1.0)]
    assert parse_emphasis("aBREAK b BREAKS") == [("aBREAK b BREAKS", 1.0)]
    assert parse_emphasis("BREAK b") == [(BREAK, BREAK_WEIGHT), ("b", 1.0)]
    assert parse_emphasis("a BREAK BREAK b") == [("a", 1.0), (BREAK, BREAK_WEIGHT), (BREAK, BREAK_WEIGHT), ("b", 1.0)]


def test_strip_emphasis():
    assert strip_emphasis("a (cat:1.5) BREAK on [a mat]") == "a cat on a mat"
    assert strip_emphasis(r"\(x\)") == "(x)"
    assert strip_emphasis("") == ""


# --------------------------------------------------------------------------------------------
# to_compel_syntax
# --------------------------------------------------------------------------------------------


def _compel_parse(text):
    """compel's own reading of ``text``: one list of (text, weight) per conjunction part."""
    return [[(f.text, f.weight) for f in part.children] for part in Compel.parse_prompt_string(text).prompts]


def _chars(fragments):
    # compel normalises whitespace and keeps the backslash of \+ \- \= escapes: compare
    # non-space characters and their weights.
    out = []
    for text, weight in fragments:
        text = re.sub(r"\\([+\-=])", r"\1", text)
        out += [(ch, round(weight, 4)) for ch in text if not ch.isspace()]
    return out


def test_to_compel_syntax_examples():
    assert to_compel_syntax("a (cat:1.5) on [a mat]") == "a (cat)1.5 on (a mat)0.909091"
    assert to_compel_syntax("((x))") == "(x)1.21"
    assert to_compel_syntax("plain words") == "plain words"
    assert to_compel_syntax("a(cat:1.5)3 dogs") == "a (cat)1.5 3 dogs"  # spaces keep compel's reading
    assert to_compel_syntax(r"\(x\)") == r"\(x\)"
    assert to_compel_syntax("") == ""


def test_to_compel_syntax_keeps_plus_and_minus_literal():
    for text in ["C++ code", "cat+ dog-", "well-lit room", "a - b", "1+1=2", "x -- y", "++", r"\(x\)+"]:
        converted = to_compel_syntax(text)
        parsed = _compel_parse(converted)
        assert len(parsed) == 1
        assert all(weight == 1.0 for _, weight in parsed[0]), (text, converted, parsed)
        assert _chars(parsed[0]) == _chars(parse_emphasis(text)), (text, converted, parsed)
    # inside weighted spans too
    converted = to_compel_syntax("(C++ vs. a - b, e=mc2:1.3)")
    assert all(weight == pytest.approx(1.3) for _, weight in _compel_parse(converted)[0])
    assert _chars(_compel_parse(converted)[0]) == _chars([("C++ vs. a - b, e=mc2", 1.3)])
    # compel would have read these as weights
    assert _compel_parse("C++")[0] != [("C++", 1.0)]
    assert _compel_parse("cat+")[0] == [("cat", pytest.approx(1.1))]


def test_to_compel_syntax_break_becomes_conjunction():
    converted = to_compel_syntax("a cat BREAK (a dog:1.2)")
    assert converted == '("a cat", "(a dog)1.2").and()'
    assert _compel_parse(converted) == [[("a cat", 1.0)], [("a dog", pytest.approx(1.2))]]


@pytest.mark.parametrize("text", [
    "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
    'say "hi" (to "them":1.2), 1,000 (1.5:0.8)',
    r"\(escaped\) [x] ((y)) (z:0)",
    "emoticons :) :( [[low]] (C++ -- - +:1.4)x",
    "(a BREAK b) c BREAK d (e",
    "- - )C++ - \\) BREAK a:",
])
def test_to_compel_syntax_round_trip(text):
    """compel reads our output as the same characters with the same weights."""
    segments = [[]]
    for fragment, weight in parse_emphasis(text):
        if (fragment, weight) == (BREAK, BREAK_WEIGHT):
            segments.append([])
        else:
            segments[-1].append((fragment, weight))
    parsed = _compel_parse(to_compel_syntax(text))
    assert [_chars(p) for p in parsed] == [_chars(s) for s in segments]


# --------------------------------------------------------------------------------------------
# needs_embeddings
# --------------------------------------------------------------------------------------------


def test_needs_embeddings(pipes):
    sd1 = pipes("tiny")
    assert not needs_embeddings(sd1, "a cat", "")
    assert not needs_embeddings(sd1, "a cat", None)
    assert not needs_embeddings(sd1, "smile :)", "a ] b")  # brackets that stay literal text
    assert needs_embeddings(sd1, "a (cat)", "")
    assert needs_embeddings(sd1, "a cat", "[blurry]")
    assert needs_embeddings(sd1, "a cat:1.2", "") is False
    assert needs_embeddings(sd1, r"a \(cat\)", "")  # the backslashes must go
    assert needs_embeddings(sd1, "a BREAK b", "")
    assert needs_embeddings(sd1, LONG, "")
    assert needs_embeddings(sd1, "a cat", LONG)
    sdxl = pipes("tiny-sdxl")
    assert needs_embeddings(sdxl, LONG, "") and not needs_embeddings(sdxl, "a cat", "")
    refiner = pipes("tiny-sdxl-refiner")
    assert needs_embeddings(refiner, LONG, "") and not needs_embeddings(refiner, "a cat", "")
    # SD3: T5 already carries long prompts; only the syntax needs us
    sd3 = pipes("tiny-sd3")
    assert not needs_embeddings(sd3, LONG, "")
    assert needs_embeddings(sd3, "(a cat:1.2)", "")


# --------------------------------------------------------------------------------------------
# encode_prompts
# --------------------------------------------------------------------------------------------


def _reference(pipe, family, prompt, negative):
    """The pipeline's own encode_prompt (under no_grad, as inside the pipeline call)."""
    with torch.no_grad():
        if family in ("sd1", "sd2"):
            embeds, negative_embeds = pipe.encode_prompt(prompt, "cpu", 1, True, negative)
            return {"prompt_embeds": embeds, "negative_prompt_embeds": negative_embeds}
        if family == "sd3":
            out = pipe.encode_prompt(prompt, None, None, device="cpu", negative_prompt=negative)
        else:
            out = pipe.encode_prompt(prompt, device="cpu", negative_prompt=negative)
    keys = ["prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
    return dict(zip(keys, out))


@pytest.mark.parametrize("name", list(FAMILY_OF))
def test_plain_prompt_matches_pipeline_encode_prompt(pipes, name):
    pipe, family = pipes(name), FAMILY_OF[name]
    ours = encode_prompts(pipe, family, "a photo of a cat, 4k", "blurry, low quality")
    reference = _reference(pipe, family, "a photo of a cat, 4k", "blurry, low quality")
    assert set(ours) == set(reference)
    for key, expected in reference.items():
        assert ours[key].shape == expected.shape, key
        assert torch.equal(ours[key], expected), key


@pytest.mark.parametrize("name", ["tiny", "tiny-sdxl"])
def test_empty_negative_matches_pipeline(pipes, name):
    """"" as negative: like the app's string path, which passes None (zeros on SDXL base)."""
    pipe, family = pipes(name), FAMILY_OF[name]
    ours = encode_prompts(pipe, family, "a cat", "")
    reference = _reference(pipe, family, "a cat", None)
    for key, expected in reference.items():
        assert torch.equal(ours[key], expected), key


def _span(tokenizer, before, word):
    """Token positions of ``word`` in the (bos +) ``before + word`` sequence."""
    start = len(tokenizer(before)["input_ids"]) - 1  # minus eos
    end = len(tokenizer(before + word)["input_ids"]) - 1
    return list(range(start, end))


@pytest.mark.parametrize("name", ["tiny", "tiny-sd2", "tiny-sdxl", "tiny-sdxl-refiner"])
def test_weight_changes_only_its_token_span(pipes, name):
    pipe, family = pipes(name), FAMILY_OF[name]
    plain = encode_prompts(pipe, family, "a cat sat", "")
    weighted = encode_prompts(pipe, family, "a (cat:1.5) sat", "")
    changed = (plain["prompt_embeds"] - weighted["prompt_embeds"])[0].abs().amax(-1).nonzero().flatten().tolist()
    tokenizer = pipe.tokenizer if pipe.tokenizer is not None else pipe.tokenizer_2
    assert changed == _span(tokenizer, "a ", "cat")
    assert torch.equal(plain["negative_prompt_embeds"], weighted["negative_prompt_embeds"])
    if "pooled_prompt_embeds" in plain:  # pooled embeddings are not weighted
        assert torch.equal(plain["pooled_prompt_embeds"], weighted["pooled_prompt_embeds"])


def test_weight_sd3_applies_to_clip_and_t5(pipes):
    pipe = pipes("tiny-sd3")
    plain = encode_prompts(pipe, "sd3", "a cat sat", "")["prompt_embeds"][0]
    weighted = encode_prompts(pipe, "sd3", "a (cat:1.5) sat", "")["prompt_embeds"][0]
    changed = (plain - weighted).abs().amax(-1).nonzero().flatten().tolist()
    clip = [i for i in changed if i < 77]
    t5 = [i - 77 for i in changed if i >= 77]
    assert clip == _span(pipe.tokenizer, "a ", "cat")
    t5_cat = pipe.tokenizer_3("cat", add_special_tokens=False)["input_ids"]
    assert len(t5) == len(t5_cat) and t5 == list(range(t5[0], t5[0] + len(t5)))


def test_downweight_changes_the_prompt(pipes):
    pipe = pipes("tiny")
    plain = encode_prompts(pipe, "sd1", "a cat sat", "")["prompt_embeds"][0]
    lowered = encode_prompts(pipe, "sd1", "a [cat] sat", "")["prompt_embeds"][0]
    span = _span(pipe.tokenizer, "a ", "cat")
    assert torch.allclose(plain[: span[0]], lowered[: span[0]], atol=1e-6)  # causal: before is untouched
    assert not torch.allclose(plain[span], lowered[span])
    # weight 0 and a whitespace-only weighted span do not crash
    encode_prompts(pipe, "sd1", "a (cat:0) [ ] (dog:-1) sat", "")


@pytest.mark.parametrize("name", ["tiny", "tiny-sdxl"])
def test_long_prompt_makes_longer_embeddings_and_an_image(pipes, name):
    pipe, family = pipes(name), FAMILY_OF[name]
    assert len(pipe.tokenizer(LONG)["input_ids"]) > 77
    kwargs = encode_prompts(pipe, family, LONG + ", (masterpiece:1.2)", "[blurry]")
    assert kwargs["prompt_embeds"].shape[1] == 154
    assert kwargs["negative_prompt_embeds"].shape == kwargs["prompt_embeds"].shape
    if family == "sdxl":
        assert kwargs["pooled_prompt_embeds"].shape == (1, pipe.text_encoder_2.config.projection_dim)
        assert kwargs["negative_pooled_prompt_embeds"].shape == kwargs["pooled_prompt_embeds"].shape
    images = pipe(**kwargs, num_inference_steps=2, height=64, width=64, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 64, 64, 3)


def test_refiner_accepts_long_embeddings(pipes):
    pipe = pipes("tiny-sdxl-refiner")
    assert pipe.text_encoder is None
    kwargs = encode_prompts(pipe, "sdxl-refiner", LONG, "")
    assert kwargs["prompt_embeds"].shape == (1, 154, pipe.text_encoder_2.config.hidden_size)
    assert set(kwargs) == {"prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds",
                           "negative_pooled_prompt_embeds"}
    images = pipe(**kwargs, image=torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)),
                  strength=1.0, num_inference_steps=2, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 64, 64, 3)


def test_break_starts_a_new_chunk(pipes):
    pipe = pipes("tiny")
    embeds = encode_prompts(pipe, "sd1", "a cat BREAK a dog", "")
    assert embeds["prompt_embeds"].shape[1] == 154
    assert embeds["negative_prompt_embeds"].shape[1] == 154  # padded with the empty prompt
    cat = encode_prompts(pipe, "sd1", "a cat", "")["prompt_embeds"]
    dog = encode_prompts(pipe, "sd1", "a dog", "")["prompt_embeds"]
    assert torch.equal(embeds["prompt_embeds"][:, :77], cat)
    assert torch.equal(embeds["prompt_embeds"][:, 77:], dog)
    assert torch.equal(embeds["negative_prompt_embeds"][:, 77:], embeds["negative_prompt_embeds"][:, :77])


def test_sd3_long_prompt_goes_to_t5_and_makes_an_image(pipes):
    pipe = pipes("tiny-sd3")
    kwargs = encode_prompts(pipe, "sd3", "(" + LONG + ":1.1)", "blurry", max_sequence_length=128)
    assert kwargs["prompt_embeds"].shape == (1, 77 + 128, pipe.text_encoder_3.config.d_model)
    assert kwargs["negative_prompt_embeds"].shape == kwargs["prompt_embeds"].shape
    assert kwargs["pooled_prompt_embeds"].shape == (1, 32 + 64)
    # T5 sees the end of the prompt that CLIP cuts off
    plain = encode_prompts(pipe, "sd3", LONG, "")["prompt_embeds"]
    shorter = encode_prompts(pipe, "sd3", LONG[:-20], "")["prompt_embeds"]
    assert torch.equal(plain[:, :77], shorter[:, :77])
    assert not torch.equal(plain[:, 77:], shorter[:, 77:])
    images = pipe(**kwargs, num_inference_steps=2, height=64, width=64, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 64, 64, 3)


def test_textual_inversion_multi_vector_tokens_match_pipeline():
    pipe = build_tiny_pipeline("tiny")
    pipe.tokenizer.add_tokens(["<emb>", "<emb>_1", "<emb>_2"])
    pipe.text_encoder.resize_token_embeddings(len(pipe.tokenizer), mean_resizing=False)
    ours = encode_prompts(pipe, "sd1", "a <emb> cat", "ugly <emb>")
    reference = _reference(pipe, "sd1", "a <emb> cat", "ugly <emb>")
    assert torch.equal(ours["prompt_embeds"], reference["prompt_embeds"])
    assert torch.equal(ours["negative_prompt_embeds"], reference["negative_prompt_embeds"])


def test_unknown_family(pipes):
    with pytest.raises(ValueError, match="family"):
        encode_prompts(pipes("tiny"), "flux", "a cat", "")
