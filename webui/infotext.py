"""Generation-parameter text ("infotext") in the AUTOMATIC1111 format.

AUTOMATIC1111's web UI stores the parameters of a generation as plain text in the
``parameters`` text chunk of every PNG it saves, and its "PNG Info" tab, civitai and many
other tools read that text back.  Easel writes and reads the same format::

    a photo of a cat, sitting on a chair
    Negative prompt: blurry, lowres
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512

* The prompt comes first and may span several lines.
* Then an optional ``Negative prompt: ...`` line (it may continue on further lines); it is
  left out when the negative prompt is empty.
* The last line holds ``Key: value`` pairs separated by ``", "``.  A value containing a
  comma, colon, double quote or line break (or with leading/trailing blanks) is written as
  a JSON string literal (``"Lora hashes": "\\"a: 1, b: 2\\""`` becomes
  ``Lora hashes: "a: 1, b: 2"``), exactly like A1111 quotes such values.

Round trip: ``parse_infotext(build_infotext(p, n, params)) == (p, n, {k: str(v)})`` for any
prompts and any parameters whose keys are valid (see :func:`build_infotext`), with two
limits inherent to the format, which A1111 shares:

* a prompt line that itself starts with ``Negative prompt:`` cannot be told apart from the
  negative prompt line;
* when ``params`` is empty no parameter line is written, so a last prompt line that looks
  exactly like ``Key: value, Key: value`` would be read back as parameters.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

__all__ = ["build_infotext", "parse_infotext", "quote_value", "unquote_value", "NEGATIVE_PROMPT_PREFIX"]

NEGATIVE_PROMPT_PREFIX = "Negative prompt:"

# Keys A1111 can parse back: a word character, then word characters, spaces, '-' or '/'.
_KEY_RE = re.compile(r"\w[\w \-/]*")
_NEEDS_QUOTES = re.compile(r'[,:"\n\r]')
_JSON_DECODER = json.JSONDecoder()


def quote_value(value: object) -> str:
    """Return ``str(value)`` ready to be written after ``Key: `` on the parameter line.

    Values containing ``,`` ``:`` ``"`` or a line break, or with leading or trailing
    whitespace, are written as a JSON string literal (non-ASCII characters kept as they
    are), the way A1111 quotes them; everything else is written unchanged.
    """
    text = str(value)
    if _NEEDS_QUOTES.search(text) or text != text.strip():
        return json.dumps(text, ensure_ascii=False)
    return text


def unquote_value(text: str) -> str:
    """Undo :func:`quote_value`: decode a JSON string literal, return anything else as is.

    Text that starts and ends with ``"`` but is not valid JSON is returned unchanged, as
    A1111 does.
    """
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        try:
            decoded = json.loads(text)
        except ValueError:
            return text
        if isinstance(decoded, str):
            return decoded
    return text


def _check_key(key: object) -> str:
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key) or key != key.rstrip():
        raise ValueError(
            f"infotext parameter name {key!r} cannot be stored: it must start with a letter, digit or "
            "'_' and contain only letters, digits, '_', spaces, '-' and '/' (no trailing space)"
        )
    return key


def build_infotext(prompt: str, negative_prompt: str, params: Mapping[str, object]) -> str:
    """Build A1111-style infotext from a prompt, a negative prompt and parameters.

    Args:
        prompt: the positive prompt; may contain line breaks.
        negative_prompt: the negative prompt; the ``Negative prompt:`` line is left out
            when it is empty.
        params: ordered ``{"Steps": 20, "Sampler": "Euler a", ...}``.  Values are written
            with ``str()``; keys whose value is ``None`` are skipped.  Values that need it
            are quoted (see :func:`quote_value`).

    Returns:
        The infotext, e.g. ``"a cat\\nNegative prompt: blurry\\nSteps: 20, Seed: 1"``.

    Raises:
        ValueError: a key that A1111 could not parse back (see the module docstring): it
            must match ``\\w[\\w \\-/]*`` and not end with a space.
    """
    prompt = "" if prompt is None else str(prompt)
    negative_prompt = "" if negative_prompt is None else str(negative_prompt)

    pairs = [f"{_check_key(key)}: {quote_value(value)}" for key, value in params.items() if value is not None]

    lines: list[str] = []
    if prompt:
        lines.append(prompt)
    if negative_prompt:
        lines.append(f"{NEGATIVE_PROMPT_PREFIX} {negative_prompt}")
    if pairs:
        lines.append(", ".join(pairs))
    return "\n".join(lines)


def _skip_spaces(line: str, pos: int) -> int:
    while pos < len(line) and line[pos].isspace():
        pos += 1
    return pos


def _scan_params(line: str) -> tuple[dict[str, str], bool]:
    """Read ``Key: value`` pairs from a parameter line.

    Returns the pairs and whether the whole line consisted of well-formed pairs.  Segments
    that are not ``Key: value`` are skipped (as A1111's regular expression does) and make
    the line "not clean".
    """
    params: dict[str, str] = {}
    clean = True
    pos = 0
    n = len(line)
    while True:
        pos = _skip_spaces(line, pos)
        if pos >= n:
            break
        colon = line.find(":", pos)
        comma = line.find(",", pos)
        key = line[pos:colon] if colon != -1 else ""
        if colon == -1 or (comma != -1 and comma < colon) or not _KEY_RE.fullmatch(key):
            # Not a "Key: value" segment: skip it.
            clean = False
            if comma == -1:
                break
            pos = comma + 1
            continue
        key = key.rstrip()
        pos = _skip_spaces(line, colon + 1)
        value = None
        if pos < n and line[pos] == '"':
            try:
                decoded, end = _JSON_DECODER.raw_decode(line, pos)
            except ValueError:
                decoded, end = None, pos
            if isinstance(decoded, str):
                after = _skip_spaces(line, end)
                if after >= n or line[after] == ",":
                    value, pos = decoded, after
        if value is None:
            comma = line.find(",", pos)
            end = n if comma == -1 else comma
            value, pos = line[pos:end].rstrip(), end
        params[key] = value
        if pos < n:  # at a comma
            pos += 1
            if _skip_spaces(line, pos) >= n:
                clean = False  # trailing comma
    return params, clean


def _is_param_line(line: str) -> tuple[bool, dict[str, str]]:
    stripped = line.strip()
    if not stripped or stripped.startswith(NEGATIVE_PROMPT_PREFIX):
        return False, {}
    params, clean = _scan_params(stripped)
    # A1111 takes the last line as parameters when it finds at least three pairs in it; a
    # line made only of well-formed pairs (what build_infotext writes) counts too.
    return (len(params) >= 3 or (clean and len(params) >= 1)), params


def parse_infotext(text: str) -> tuple[str, str, dict[str, str]]:
    """Parse A1111-style infotext into ``(prompt, negative_prompt, params)``.

    Reads what :func:`build_infotext` writes and what A1111, Forge and civitai write.
    ``params`` keeps the order of the text and every value is a string (quoted values are
    decoded; ``Size: 512x512`` stays ``"512x512"``).  Unlike A1111 no defaults are filled
    in: a missing key is simply absent.

    The last non-blank line is taken as the parameter line when it consists of
    ``Key: value`` pairs only, or when at least three pairs can be found in it (A1111's
    rule, which tolerates odd segments written by some extensions).  Lines before it are
    the prompt, up to the first line starting with ``Negative prompt:``, after which they
    form the negative prompt.  Lines are split at ``\n`` only: a ``\r`` belongs to the text
    (so prompts containing one survive the round trip); blanks around the parameter line,
    ``\r`` included, are ignored.

    Args:
        text: the infotext; ``None`` or empty gives ``("", "", {})``.

    Returns:
        ``(prompt, negative_prompt, params)``.
    """
    if not text:
        return "", "", {}
    lines = text.split("\n")
    last = len(lines) - 1
    while last >= 0 and not lines[last].strip():
        last -= 1
    if last < 0:  # blank text: nothing but a (blank) prompt
        return text, "", {}

    params: dict[str, str] = {}
    is_params, found = _is_param_line(lines[last])
    if is_params:
        params = found
        lines = lines[:last]

    prompt_lines: list[str] = []
    negative_lines: list[str] | None = None
    for line in lines:
        if negative_lines is None and line.startswith(NEGATIVE_PROMPT_PREFIX):
            rest = line[len(NEGATIVE_PROMPT_PREFIX):]
            negative_lines = [rest[1:] if rest.startswith(" ") else rest]
        elif negative_lines is not None:
            negative_lines.append(line)
        else:
            prompt_lines.append(line)

    prompt = "\n".join(prompt_lines)
    negative_prompt = "\n".join(negative_lines) if negative_lines is not None else ""
    return prompt, negative_prompt, params
