"""Text encoders are saved under the official checkpoints' key names (``text_model.*``).

transformers 5 saves a ``CLIPTextModel`` built from a config as ``embeddings.*`` /
``encoder.layers.*``; transformers 4 (InvokeAI on transformers 5.5 too) then loads such a file
silently as a random text encoder. These tests read the key names in the files and check that
transformers loads the renamed files back to the same outputs, without missing weights.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from webui.pipelines.sources import DEMO_MODEL_DIR
from webui.pipelines.text_encoder_keys import (official_clip_text_key, rewrite_clip_text_encoder,
                                               rewrite_pipeline_text_encoders, save_pipeline)

TOKENS = torch.tensor([[0, 5, 17, 42, 99, 1]])


def tiny_config(**overrides) -> CLIPTextConfig:
    values = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
                  vocab_size=100, projection_dim=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    values.update(overrides)
    return CLIPTextConfig(**values)


def keys_of(path) -> list[str]:
    with safe_open(str(path), "pt") as handle:
        return list(handle.keys())


def load_strictly(folder) -> CLIPTextModel:
    """A CLIPTextModel whose weights come from the file by name, with ``load_state_dict(strict=True)``:
    a reference that does not depend on transformers' key conversions."""
    model = CLIPTextModel(CLIPTextConfig.from_pretrained(folder)).float().eval()
    tensors = load_file(str(folder / "model.safetensors"))
    model.load_state_dict({k.removeprefix("text_model."): v.float() for k, v in tensors.items()}, strict=True)
    return model


class Transformers4Layout(torch.nn.Module):
    """The module tree of transformers 4's ``CLIPTextModel`` (``text_model`` = the text transformer):
    a strict ``load_state_dict`` into it succeeds only with the official key names."""

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.text_model = CLIPTextModel(config)


def load_as_transformers_4(folder) -> Transformers4Layout:
    model = Transformers4Layout(CLIPTextConfig.from_pretrained(folder)).float().eval()
    tensors = load_file(str(folder / "model.safetensors"))
    buffers = {name for name, _ in model.named_buffers()}
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=False)
    assert not unexpected and set(missing) <= buffers, (missing[:3], unexpected[:3])
    return model


def load_with_transformers(folder) -> CLIPTextModel:
    model, info = CLIPTextModel.from_pretrained(folder, output_loading_info=True, dtype=torch.float32)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return model.eval()


def test_official_names():
    assert official_clip_text_key("encoder.layers.0.mlp.fc1.weight") == "text_model.encoder.layers.0.mlp.fc1.weight"
    assert official_clip_text_key("text_model.final_layer_norm.bias") == "text_model.final_layer_norm.bias"
    assert official_clip_text_key("text_projection.weight") == "text_projection.weight"


@pytest.mark.skipif(not (DEMO_MODEL_DIR / "text_encoder").is_dir(), reason="demo model not shipped")
def test_shipped_demo_text_encoder_has_official_names_and_loads_its_trained_weights():
    folder = DEMO_MODEL_DIR / "text_encoder"
    keys = keys_of(folder / "model.safetensors")
    assert len(keys) == 36 and all(k.startswith("text_model.") for k in keys), keys[:3]
    for required in ("text_model.embeddings.token_embedding.weight", "text_model.encoder.layers.1.mlp.fc2.weight",
                     "text_model.final_layer_norm.weight"):
        assert required in keys
    with torch.no_grad():
        loaded = load_with_transformers(folder)(TOKENS).last_hidden_state
        reference = load_strictly(folder)(TOKENS).last_hidden_state
        old_layout = load_as_transformers_4(folder).text_model(TOKENS).last_hidden_state
        random = CLIPTextModel(CLIPTextConfig.from_pretrained(folder)).eval()(TOKENS).last_hidden_state
    assert torch.equal(old_layout, reference)  # transformers 4's module names read the same weights
    assert torch.equal(loaded, reference)
    assert (loaded - random).abs().max() > 0.1  # the trained weights, not a fresh initialisation


def test_rewrite_renames_a_from_config_encoder_and_transformers_reads_it_back(tmp_path):
    torch.manual_seed(0)
    model = CLIPTextModel(tiny_config()).eval()
    model.save_pretrained(tmp_path / "te")
    before = keys_of(tmp_path / "te" / "model.safetensors")
    with safe_open(str(tmp_path / "te" / "model.safetensors"), "pt") as handle:
        metadata = handle.metadata()
    # transformers 5 writes the flattened names for a model built from a config (the bug this fixes)
    assert any(not k.startswith("text_model.") for k in before), before[:3]

    renamed = rewrite_clip_text_encoder(tmp_path / "te")
    after = keys_of(tmp_path / "te" / "model.safetensors")
    assert renamed == len(before) == len(after)
    assert sorted(after) == sorted(official_clip_text_key(k) for k in before)
    assert all(k.startswith("text_model.") for k in after)
    with safe_open(str(tmp_path / "te" / "model.safetensors"), "pt") as handle:
        assert handle.metadata() == metadata
    assert rewrite_clip_text_encoder(tmp_path / "te") == 0  # idempotent

    with torch.no_grad():
        expected = model(TOKENS)
        got = load_with_transformers(tmp_path / "te")(TOKENS)
    assert torch.equal(got.last_hidden_state, expected.last_hidden_state)
    assert torch.equal(got.pooler_output, expected.pooler_output)


def test_with_projection_and_non_clip_folders_are_left_alone(tmp_path):
    CLIPTextModelWithProjection(tiny_config()).save_pretrained(tmp_path / "te2")
    keys = keys_of(tmp_path / "te2" / "model.safetensors")
    assert "text_projection.weight" in keys and all(k.startswith(("text_model.", "text_projection.")) for k in keys)
    assert rewrite_clip_text_encoder(tmp_path / "te2") == 0
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"architectures": ["T5EncoderModel"]}))
    assert rewrite_clip_text_encoder(tmp_path / "other") == 0


def test_save_pipeline_writes_official_text_encoder_names(tmp_path):
    from diffusers import StableDiffusionPipeline

    from webui.pipelines.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("tiny")
    save_pipeline(pipe, tmp_path / "pipe")
    keys = keys_of(tmp_path / "pipe" / "text_encoder" / "model.safetensors")
    assert keys and all(k.startswith("text_model.") for k in keys)
    assert rewrite_pipeline_text_encoders(tmp_path / "pipe") == 0
    again = StableDiffusionPipeline.from_pretrained(tmp_path / "pipe", local_files_only=True)
    with torch.no_grad():
        ids = torch.tensor([[0, 3, 4, 1]])
        assert torch.equal(again.text_encoder(ids).last_hidden_state, pipe.text_encoder(ids).last_hidden_state)


@pytest.mark.parametrize("name", ["tiny", "tiny-sdxl"])
def test_tiny_model_folders_use_official_names(name, tmp_path):
    from webui.pipelines.tiny import save_tiny_pipeline

    folder = save_tiny_pipeline(name, tmp_path / name)
    files = sorted(folder.glob("text_encoder*/model.safetensors"))
    assert len(files) == (2 if name == "tiny-sdxl" else 1)
    for path in files:
        keys = keys_of(path)
        assert keys and all(k.startswith(("text_model.", "text_projection.")) for k in keys), (path, keys[:3])
