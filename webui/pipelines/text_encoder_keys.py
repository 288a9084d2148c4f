"""Save CLIP text encoders under the key names of the official checkpoints.

Why: transformers 5 flattened ``CLIPTextModel`` (its modules are ``embeddings``, ``encoder``,
``final_layer_norm``; no ``text_model`` submodule any more).  On load it strips a leading
``text_model.`` from the file's keys (``conversion_mapping``: ``"CLIPTextModel":
[PrefixChange(prefix_to_remove="text_model")]``), and ``save_pretrained`` puts the prefix back
only when the model itself was loaded from a prefixed file (``revert_weight_conversion`` drops
the ``PrefixChange`` for a model built from a config).  So a text encoder trained from scratch,
built from a config or loaded from an unprefixed file is saved as ``embeddings.*`` /
``encoder.layers.*``, which transformers 4.x (and every tool on it: InvokeAI with transformers
5.5 did the same) does not recognise: it loads such a file *silently* as a random text encoder.

The official checkpoints (``openai/clip-vit-large-patch14``, every SD 1.x / SDXL diffusers
repository) name the weights ``text_model.embeddings.*``, ``text_model.encoder.layers.*``,
``text_model.final_layer_norm.*``; old and new loaders both read those.  This module rewrites
a saved text encoder's safetensors file(s) to those names: weights, dtypes and the file's
metadata are unchanged, only the names.

``CLIPTextModelWithProjection`` (SDXL's second encoder) still has a ``text_model`` submodule in
transformers 5 and is saved with the official names already; files that already carry the
prefix are left untouched, so the rewrite is idempotent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["OFFICIAL_PREFIX", "official_clip_text_key", "rewrite_clip_text_encoder",
           "rewrite_pipeline_text_encoders", "save_pipeline"]

OFFICIAL_PREFIX = "text_model."
# keys that sit beside ``text_model`` in the official layout (CLIPTextModelWithProjection)
_TOP_LEVEL_KEYS = ("text_projection.",)
_CLIP_TEXT_ARCHITECTURES = {"CLIPTextModel", "CLIPTextModelWithProjection"}


def official_clip_text_key(key: str) -> str:
    """The official checkpoint's name for a CLIP text encoder weight ``key``.

    ``encoder.layers.0.mlp.fc1.weight`` -> ``text_model.encoder.layers.0.mlp.fc1.weight``;
    names already in the official layout are returned unchanged.
    """
    if key.startswith(OFFICIAL_PREFIX) or key.startswith(_TOP_LEVEL_KEYS):
        return key
    return OFFICIAL_PREFIX + key


def _is_clip_text_encoder(folder: Path) -> bool:
    config = folder / "config.json"
    if not config.is_file():
        return False
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(set(data.get("architectures") or []) & _CLIP_TEXT_ARCHITECTURES) \
        or data.get("model_type") == "clip_text_model"


def _rewrite_file(path: Path) -> dict[str, str]:
    """Rename the keys of one safetensors file in place (atomically). Returns {old: new} of renamed keys."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata() or {}
        keys = list(handle.keys())
        renames = {k: official_clip_text_key(k) for k in keys if official_clip_text_key(k) != k}
        if not renames:
            return {}
        tensors = {official_clip_text_key(k): handle.get_tensor(k) for k in keys}
    metadata.setdefault("format", "pt")
    tmp = path.with_name(path.name + ".renaming")
    save_file(tensors, str(tmp), metadata=metadata)
    os.chmod(tmp, path.stat().st_mode & 0o777)  # keep the file's permissions
    os.replace(tmp, path)
    return renames


def rewrite_clip_text_encoder(folder: str | os.PathLike) -> int:
    """Rewrite the CLIP text encoder saved in ``folder`` (``config.json`` + ``*.safetensors``,
    sharded or not) to the official key names. Returns how many keys were renamed (0 when the
    folder is not a CLIP text encoder or already uses the official names)."""
    folder = Path(folder)
    if not _is_clip_text_encoder(folder):
        return 0
    renamed = 0
    for path in sorted(folder.glob("*.safetensors")):
        renamed += len(_rewrite_file(path))
    for index_path in folder.glob("*.safetensors.index.json"):  # sharded: the index names the keys too
        index = json.loads(index_path.read_text(encoding="utf-8"))
        index["weight_map"] = {official_clip_text_key(k): v for k, v in index.get("weight_map", {}).items()}
        tmp = index_path.with_name(index_path.name + ".renaming")
        tmp.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, index_path)
    return renamed


def rewrite_pipeline_text_encoders(folder: str | os.PathLike) -> int:
    """Apply :func:`rewrite_clip_text_encoder` to every ``text_encoder*`` subfolder of a diffusers
    pipeline folder. Returns the number of keys renamed in all of them."""
    folder = Path(folder)
    return sum(rewrite_clip_text_encoder(sub) for sub in sorted(folder.glob("text_encoder*")) if sub.is_dir())


def save_pipeline(pipe, folder: str | os.PathLike) -> Path:
    """``pipe.save_pretrained(folder, safe_serialization=True)``, then the text encoders renamed
    to the official key names, so that the folder loads in transformers 4 and 5 alike."""
    folder = Path(folder)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    rewrite_pipeline_text_encoders(folder)
    return folder
