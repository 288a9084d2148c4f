"""Tests for webui.infotext (A1111 generation-parameter text)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json  # noqa: E402
import random  # noqa: E402

import pytest  # noqa: E402

from webui.infotext import build_infotext, parse_infotext, quote_value, unquote_value  # noqa: E402

# --- real A1111 / civitai samples --------------------------------------------------------

A1111_SD15_HIRES = (
    "masterpiece, best quality, 1girl, solo, long hair, looking at viewer, smile, <lora:add_detail:0.6>, "
    "(detailed background:1.2)\n"
    "Negative prompt: EasyNegative, (worst quality, low quality:1.4), bad-hands-5\n"
    "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 3141592653, Size: 512x768, "
    "Model hash: 7f96a1a9ca, Model: AnythingV5_v5PrtRE, Denoising strength: 0.45, Clip skip: 2, "
    "Hires upscale: 2, Hires steps: 15, Hires upscaler: R-ESRGAN 4x+ Anime6B, "
    'Lora hashes: "add_detail: 7c6bad76eb54", '
    'TI hashes: "EasyNegative: c74b4e810b03, bad-hands-5: aa7651be154c", Emphasis: Original, Version: v1.10.1'
)

A1111_SDXL_ADETAILER = (
    "photo of a woman in a red coat, city street at night,\n"
    "bokeh, 35mm, (film grain:0.8)\n"
    "Negative prompt: cartoon, painting, illustration,\n"
    "deformed hands\n"
    "Steps: 30, Sampler: DPM++ 2M SDE Karras, CFG scale: 5.5, Seed: 1234567890, Size: 832x1216, "
    "Model hash: 31e35c80fc, Model: sd_xl_base_1.0, VAE hash: 235745af8d, VAE: sdxl_vae.safetensors, "
    'ADetailer model: face_yolov8n.pt, ADetailer prompt: "detailed face, sharp eyes", '
    "ADetailer confidence: 0.3, ADetailer dilate erode: 4, ADetailer version: 24.1.2, "
    'Hires prompt: "photo of a woman,\\nfilm grain", Version: v1.7.0'
)

# No negative prompt, a bare segment ("Tiling") some versions/extensions write, trailing newline.
A1111_NO_NEGATIVE = (
    "a watercolor painting of a lighthouse\n"
    "Steps: 20, Sampler: Euler a, CFG scale: 7.0, Seed: 42, Tiling, Size: 512x512, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: 1.5.1\n"
)


def test_parse_a1111_hires_lora_ti():
    prompt, negative, params = parse_infotext(A1111_SD15_HIRES)
    assert prompt.startswith("masterpiece, best quality") and prompt.endswith("(detailed background:1.2)")
    assert "\n" not in prompt
    assert negative == "EasyNegative, (worst quality, low quality:1.4), bad-hands-5"
    assert params["Steps"] == "28"
    assert params["Sampler"] == "DPM++ 2M"
    assert params["Schedule type"] == "Karras"
    assert params["CFG scale"] == "7"
    assert params["Seed"] == "3141592653"
    assert params["Size"] == "512x768"
    assert params["Model hash"] == "7f96a1a9ca"
    assert params["Hires upscale"] == "2"
    assert params["Hires upscaler"] == "R-ESRGAN 4x+ Anime6B"
    assert params["Lora hashes"] == "add_detail: 7c6bad76eb54"
    assert params["TI hashes"] == "EasyNegative: c74b4e810b03, bad-hands-5: aa7651be154c"
    assert params["Version"] == "v1.10.1"
    assert list(params)[:3] == ["Steps", "Sampler", "Schedule type"]
    assert len(params) == 17


def test_parse_a1111_sdxl_multiline_and_quoted():
    prompt, negative, params = parse_infotext(A1111_SDXL_ADETAILER)
    assert prompt == "photo of a woman in a red coat, city street at night,\nbokeh, 35mm, (film grain:0.8)"
    assert negative == "cartoon, painting, illustration,\ndeformed hands"
    assert params["Sampler"] == "DPM++ 2M SDE Karras"
    assert params["CFG scale"] == "5.5"
    assert params["ADetailer prompt"] == "detailed face, sharp eyes"
    assert params["Hires prompt"] == "photo of a woman,\nfilm grain"
    assert params["VAE"] == "sdxl_vae.safetensors"
    assert params["Version"] == "v1.7.0"


def test_parse_a1111_without_negative_and_odd_segment():
    prompt, negative, params = parse_infotext(A1111_NO_NEGATIVE)
    assert prompt == "a watercolor painting of a lighthouse"
    assert negative == ""
    assert params["Sampler"] == "Euler a"
    assert params["Size"] == "512x512"
    assert params["Model"] == "v1-5-pruned-emaonly"
    assert "Tiling" not in params  # skipped, like A1111 does


def test_parse_windows_line_endings():
    """\r is kept in prompts (it may be part of one) but does not disturb the parameters."""
    prompt, negative, params = parse_infotext(A1111_SDXL_ADETAILER.replace("\n", "\r\n"))
    assert params == parse_infotext(A1111_SDXL_ADETAILER)[2]
    assert prompt.replace("\r", "") == parse_infotext(A1111_SDXL_ADETAILER)[0]
    assert negative.replace("\r", "") == parse_infotext(A1111_SDXL_ADETAILER)[1]


def test_parse_without_parameters():
    assert parse_infotext("just a prompt") == ("just a prompt", "", {})
    assert parse_infotext("a, b\nNegative prompt: c") == ("a, b", "c", {})
    assert parse_infotext("Negative prompt: only negative") == ("", "only negative", {})
    assert parse_infotext("") == ("", "", {})
    assert parse_infotext(None) == ("", "", {})
    # A1111's rule: fewer than three pairs in a line with other text is still prompt.
    assert parse_infotext("cat, style: anime, dog") == ("cat, style: anime, dog", "", {})


def test_parse_only_parameters():
    assert parse_infotext("Steps: 20, Seed: 1, Size: 64x64") == ("", "", {"Steps": "20", "Seed": "1", "Size": "64x64"})


def test_our_text_is_what_a1111_writes():
    text = build_infotext(
        "a cat",
        "blurry",
        {"Steps": 20, "Sampler": "Euler a", "Schedule type": "Karras", "CFG scale": 7, "Seed": 1,
         "Size": "512x512", "Model hash": "abc123", "Model": "name", "Lora hashes": "a: 1, b: 2",
         "Version": "easel 0.1"},
    )
    assert text == (
        "a cat\nNegative prompt: blurry\n"
        "Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512, "
        'Model hash: abc123, Model: name, Lora hashes: "a: 1, b: 2", Version: easel 0.1'
    )


def test_build_skips_none_and_empty_negative():
    assert build_infotext("p", "", {"Steps": 20, "VAE": None}) == "p\nSteps: 20"
    assert build_infotext("", "", {"Steps": 20}) == "Steps: 20"
    assert build_infotext("", "n", {}) == "Negative prompt: n"
    assert build_infotext("", "", {}) == ""


@pytest.mark.parametrize("key", ["", " Steps", "Steps ", "Bad:key", "a,b", "new\nline", "(paren)", 3])
def test_build_rejects_keys_a1111_cannot_read(key):
    with pytest.raises(ValueError):
        build_infotext("p", "", {key: 1})


def test_quote_like_a1111():
    assert quote_value("Euler a") == "Euler a"
    assert quote_value(7.5) == "7.5"
    assert quote_value("a: 1, b: 2") == '"a: 1, b: 2"'
    assert quote_value('say "hi"') == '"say \\"hi\\""'
    assert quote_value("two\nlines") == '"two\\nlines"'
    assert quote_value("日本, ü") == '"日本, ü"'  # not \\u-escaped, as A1111
    assert quote_value(" padded") == '" padded"'
    for value in ["a: 1, b: 2", 'x"y', "two\nlines", '"', " x", "x\t"]:  # need quotes: written as JSON strings
        assert quote_value(value).startswith('"') and json.loads(quote_value(value)) == value
        assert unquote_value(quote_value(value)) == value
    for value in ["plain", "\\", "", "Euler a", "x=1"]:  # need none: written as they are
        assert quote_value(value) == value and unquote_value(value) == value
    assert unquote_value('"not json') == '"not json'
    assert unquote_value('"bad \\x escape"') == '"bad \\x escape"'


# --- round trip ---------------------------------------------------------------------------

ROUND_TRIP_CASES = [
    ("a cat", "", {"Steps": 20}),
    ("a cat", "blurry", {"Steps": 20, "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": 7.5,
                         "Seed": 4294967295, "Size": "512x512", "Model hash": "abc123", "Model": "name"}),
    ("line one\nline two\n\nline four", "neg one\nneg two", {"Seed": 1}),
    ("commas, colons: yes, \"quotes\" and 'single'", "more: colons, \"here\"", {"Seed": 1, "Foo": "bar"}),
    ("unicode 日本語 ü é 🙂", "ネガティブ", {"Model": "モデル", "Lora hashes": "a: 1, b: 2"}),
    ("", "", {"Steps": 1}),
    ("", "negative only", {"Steps": 1}),
    ("prompt only", "", {"X": 1}),
    ("Steps: 20, Sampler: fake", "", {"Seed": 1}),  # a prompt that looks like parameters
    ("trailing newline\n", "", {"Seed": 1}),
    ("\nleading newline", " leading space", {"Seed": 1}),
    ("p", "n", {"Empty": "", "Spaces": "  ", "Quote": '"', "Backslash": "a\\b", "Tab": "a\tb",
                "Newline": "x\ny", "CR": "x\r\ny", "Bool": True, "Float": 0.1, "Neg": -3, "Json": '{"a": [1, 2]}',
                "Unicode key ü": "v", "Slash/Key-1": "v"}),
    ("windows\r\nprompt", "n", {"Seed": 1}),
    ("neg-like\nNegative prompt:x is in the negative", "", {"Seed": 1}),
]


@pytest.mark.parametrize("prompt,negative,params", ROUND_TRIP_CASES)
def test_round_trip(prompt, negative, params):
    text = build_infotext(prompt, negative, params)
    expected = {k: str(v) for k, v in params.items() if v is not None}
    if prompt.endswith("Negative prompt:x is in the negative"):
        # The one ambiguity of the format: a prompt line starting with "Negative prompt:".
        assert parse_infotext(text)[1] == "x is in the negative"
        return
    assert parse_infotext(text) == (prompt, negative, expected)


def test_round_trip_without_params():
    for prompt, negative in [("a cat", ""), ("a cat", "dog"), ("multi\nline", "neg\nmulti"), ("", ""),
                             ("trailing\n\n", ""), ("x", "y\n")]:
        assert parse_infotext(build_infotext(prompt, negative, {})) == (prompt, negative, {})


_TRICKY = list("abcXYZ 019,:\"'\\\n\r\t-_/()[]{}<>=#%&*+|~;.?!üé日本🙂") + ["Negative", "Steps: 1"]
_KEY_CHARS = list("abcdefXYZ0123456789_ -/ü")


def _random_text(rng, max_len=30):
    return "".join(rng.choice(_TRICKY) for _ in range(rng.randint(0, max_len)))


def _random_key(rng):
    first = rng.choice("abcXYZ019_ü")
    key = first + "".join(rng.choice(_KEY_CHARS) for _ in range(rng.randint(0, 12)))
    return key.rstrip()


def test_round_trip_fuzz():
    rng = random.Random(1234)
    for _ in range(3000):
        prompt = _random_text(rng)
        negative = _random_text(rng)
        if any(line.startswith("Negative prompt:") for line in prompt.split("\n")):
            continue
        params = {_random_key(rng): _random_text(rng, 15) for _ in range(rng.randint(1, 6))}
        text = build_infotext(prompt, negative, params)
        assert parse_infotext(text) == (prompt, negative, params), repr(text)


def test_round_trip_hypothesis(tmp_path):
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import configuration

    configuration.set_hypothesis_home_dir(str(tmp_path / ".hypothesis"))  # keep the repository clean
    st = hypothesis.strategies

    keys = st.from_regex(r"\A\w[\w \-/]{0,15}\Z", fullmatch=True).map(str.rstrip).filter(bool)
    values = st.one_of(st.text(max_size=20), st.integers(), st.floats(allow_nan=False), st.booleans())

    @hypothesis.settings(max_examples=300, deadline=None, database=None)
    @hypothesis.given(
        prompt=st.text(max_size=40), negative=st.text(max_size=40),
        params=st.dictionaries(keys, values, min_size=1, max_size=6),
    )
    def check(prompt, negative, params):
        hypothesis.assume(not any(line.startswith("Negative prompt:") for line in prompt.split("\n")))
        try:
            text = build_infotext(prompt, negative, params)
        except ValueError:
            hypothesis.assume(False)
        assert parse_infotext(text) == (prompt, negative, {k: str(v) for k, v in params.items()})

    check()
