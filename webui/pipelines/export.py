"""Export a diffusers pipeline as ONE original-layout ``.safetensors`` checkpoint.

This is the inverse of diffusers' single-file loader (``from_single_file``): the keys follow the
original CompVis / Stability layouts that A1111, ComfyUI and diffusers itself read.

================  ===============================================================================
family            layout
================  ===============================================================================
SD1               ``model.diffusion_model.*`` (LDM UNet), ``first_stage_model.*`` (VAE),
                  ``cond_stage_model.transformer.text_model.*`` (OpenAI CLIP)
SD2               as SD1, but the text encoder as OpenCLIP: ``cond_stage_model.model.*``
                  (chosen when the text encoder uses ``hidden_act="gelu"``)
SDXL base         ``conditioner.embedders.0.transformer.text_model.*`` (CLIP-L) and
                  ``conditioner.embedders.1.model.*`` (OpenCLIP-bigG, with ``text_projection``)
SDXL refiner      ``conditioner.embedders.0.model.*`` (OpenCLIP-bigG only)
SD3 / SD3.5       ``model.diffusion_model.joint_blocks.*`` (MMDiT), ``first_stage_model.*``,
                  ``text_encoders.clip_l.transformer.*``, ``text_encoders.clip_g.transformer.*``,
                  ``text_encoders.t5xxl.transformer.*``
================  ===============================================================================

The key mappings are derived from the HuggingFace diffusers project (Apache License 2.0,
Copyright The HuggingFace Team): ``scripts/convert_diffusers_to_original_stable_diffusion.py``,
``scripts/convert_diffusers_to_original_sdxl.py`` and, inverted, ``scripts/convert_sd3_to_diffusers.py``
and ``diffusers/loaders/single_file_utils.py``.  Unlike the official scripts, which hard-code
the block counts of the full-size models, the UNet and VAE mappings here are computed from the
model configs, so any block/layer count round-trips (the built-in tiny models included).
Every weight of every exported component is mapped; an unknown key raises instead of being
silently dropped.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import struct
from collections.abc import Iterable, Mapping

import torch

__all__ = ["CONFIG_SIDECAR_SUFFIX", "export_checkpoint", "export_diffusers_folder", "export_single_file",
           "pipeline_to_original_state_dict", "save_config_folder"]

CONFIG_SIDECAR_SUFFIX = ".config"  # ``model.config/`` beside ``model.safetensors`` (see webui.pipelines.sources)

StateDict = dict[str, torch.Tensor]


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _state_dict(module: torch.nn.Module) -> StateDict:
    return {k: v.detach() for k, v in module.state_dict().items()}


def _prefixed(prefix: str, sd: Mapping[str, torch.Tensor]) -> StateDict:
    return {prefix + k: v for k, v in sd.items()}


def _check_all_used(component: str, sd: Mapping[str, torch.Tensor], used: Iterable[str]) -> None:
    left = sorted(set(sd) - set(used))
    if left:
        raise ValueError(f"cannot export {component}: no original-layout name for {left[:10]}"
                         f"{' ...' if len(left) > 10 else ''}")


def _rename_by_prefix(component: str, sd: Mapping[str, torch.Tensor],
                      rules: list[tuple[str, str]]) -> StateDict:
    """Rename keys by the longest matching diffusers prefix in ``rules`` ((diffusers, original))."""
    rules = sorted(rules, key=lambda r: len(r[0]), reverse=True)
    out: StateDict = {}
    unmapped = []
    for key, value in sd.items():
        for src, dst in rules:
            if key.startswith(src):
                out[dst + key[len(src):]] = value
                break
        else:
            unmapped.append(key)
    _check_all_used(component, {k: sd[k] for k in unmapped}, [])
    return out


# --------------------------------------------------------------------------------------------
# UNet (SD1 / SD2 / SDXL)
# --------------------------------------------------------------------------------------------

# (diffusers, original) names inside a ResnetBlock2D
_UNET_RESNET_PARTS = [
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("time_emb_proj.", "emb_layers.1."),
    ("conv_shortcut.", "skip_connection."),
]

_UNET_TOP_LEVEL = [
    ("time_embedding.linear_1.", "time_embed.0."),
    ("time_embedding.linear_2.", "time_embed.2."),
    ("conv_in.", "input_blocks.0.0."),
    ("conv_norm_out.", "out.0."),
    ("conv_out.", "out.2."),
    ("add_embedding.linear_1.", "label_emb.0.0."),
    ("add_embedding.linear_2.", "label_emb.0.2."),
    ("class_embedding.linear_1.", "label_emb.0.0."),
    ("class_embedding.linear_2.", "label_emb.0.2."),
]


def convert_unet_to_original(sd: Mapping[str, torch.Tensor], config: Mapping) -> StateDict:
    """Map a diffusers ``UNet2DConditionModel`` state dict to the LDM ``openaimodel`` layout.

    The block numbering follows the config (``layers_per_block``, number of down/up blocks), as
    diffusers' ``convert_ldm_unet_checkpoint`` expects when reading it back.
    """
    layers = config["layers_per_block"]
    if not isinstance(layers, int):
        raise ValueError("cannot export a UNet with per-block layers_per_block to the LDM layout")
    n_blocks = len(config["down_block_types"])
    per_level = layers + 1
    resnet_rules: list[tuple[str, str]] = []  # prefixes whose inner names need the resnet renames
    other_rules: list[tuple[str, str]] = list(_UNET_TOP_LEVEL)

    for b in range(n_blocks):
        for j in range(layers):
            idx = 1 + b * per_level + j
            resnet_rules.append((f"down_blocks.{b}.resnets.{j}.", f"input_blocks.{idx}.0."))
            other_rules.append((f"down_blocks.{b}.attentions.{j}.", f"input_blocks.{idx}.1."))
        if b < n_blocks - 1:
            idx = 1 + b * per_level + layers
            other_rules.append((f"down_blocks.{b}.downsamplers.0.conv.", f"input_blocks.{idx}.0.op."))

    resnet_rules += [("mid_block.resnets.0.", "middle_block.0."), ("mid_block.resnets.1.", "middle_block.2.")]
    other_rules.append(("mid_block.attentions.0.", "middle_block.1."))

    for b in range(n_blocks):
        has_attention = any(k.startswith(f"up_blocks.{b}.attentions.") for k in sd)
        for j in range(per_level):
            idx = b * per_level + j
            resnet_rules.append((f"up_blocks.{b}.resnets.{j}.", f"output_blocks.{idx}.0."))
            other_rules.append((f"up_blocks.{b}.attentions.{j}.", f"output_blocks.{idx}.1."))
        if b < n_blocks - 1:
            idx = b * per_level + layers
            slot = 2 if has_attention else 1
            other_rules.append((f"up_blocks.{b}.upsamplers.0.conv.", f"output_blocks.{idx}.{slot}.conv."))

    out: StateDict = {}
    resnet_keys = {k for k in sd if any(k.startswith(p) for p, _ in resnet_rules)}
    for key in resnet_keys:
        prefix, target = next((p, t) for p, t in resnet_rules if key.startswith(p))
        rest = key[len(prefix):]
        for src, dst in _UNET_RESNET_PARTS:
            if rest.startswith(src):
                rest = dst + rest[len(src):]
                break
        out[target + rest] = sd[key]
    out.update(_rename_by_prefix("unet", {k: v for k, v in sd.items() if k not in resnet_keys}, other_rules))
    return out


# --------------------------------------------------------------------------------------------
# VAE
# --------------------------------------------------------------------------------------------

_VAE_ATTENTION_PARTS = [
    ("group_norm.", "norm."),
    ("to_q.", "q."),
    ("to_k.", "k."),
    ("to_v.", "v."),
    ("to_out.0.", "proj_out."),
]


def convert_vae_to_original(sd: Mapping[str, torch.Tensor], config: Mapping) -> StateDict:
    """Map a diffusers ``AutoencoderKL`` state dict to the LDM ``first_stage_model`` layout."""
    n_blocks = len(config["down_block_types"])
    rules: list[tuple[str, str]] = [
        ("encoder.conv_in.", "encoder.conv_in."),
        ("encoder.conv_out.", "encoder.conv_out."),
        ("encoder.conv_norm_out.", "encoder.norm_out."),
        ("decoder.conv_in.", "decoder.conv_in."),
        ("decoder.conv_out.", "decoder.conv_out."),
        ("decoder.conv_norm_out.", "decoder.norm_out."),
        ("quant_conv.", "quant_conv."),
        ("post_quant_conv.", "post_quant_conv."),
    ]
    for i in range(n_blocks):
        rules.append((f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block."))
        rules.append((f"encoder.down_blocks.{i}.downsamplers.0.conv.", f"encoder.down.{i}.downsample.conv."))
        rules.append((f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{n_blocks - 1 - i}.block."))
        rules.append((f"decoder.up_blocks.{i}.upsamplers.0.conv.", f"decoder.up.{n_blocks - 1 - i}.upsample.conv."))
    for part in ("encoder", "decoder"):
        for k in range(2):
            rules.append((f"{part}.mid_block.resnets.{k}.", f"{part}.mid.block_{k + 1}."))
        rules.append((f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1."))

    out: StateDict = {}
    for key, value in _rename_by_prefix("vae", sd, rules).items():
        key = key.replace(".conv_shortcut.", ".nin_shortcut.")
        if ".mid.attn_1." in key:
            head, rest = key.split(".mid.attn_1.", 1)
            for src, dst in _VAE_ATTENTION_PARTS:
                if rest.startswith(src):
                    rest = dst + rest[len(src):]
                    break
            key = f"{head}.mid.attn_1.{rest}"
            if rest.split(".")[0] in ("q", "k", "v", "proj_out") and rest.endswith("weight") and value.ndim == 2:
                value = value.reshape(*value.shape, 1, 1)  # linear -> 1x1 conv, as in the LDM VAE
        out[key] = value
    return out


# --------------------------------------------------------------------------------------------
# Text encoders
# --------------------------------------------------------------------------------------------


def _clip_text_model_sd(module: torch.nn.Module) -> StateDict:
    """CLIP text state dict with ``text_model.`` names (transformers >= 5.6 flattened CLIPTextModel)."""
    out: StateDict = {}
    for key, value in _state_dict(module).items():
        if key.startswith("text_model.") or key == "text_projection.weight":
            out[key] = value
        else:
            out["text_model." + key] = value
    return out


def convert_openai_clip_to_original(module: torch.nn.Module) -> StateDict:
    """OpenAI-CLIP layout (``transformer.text_model.*``) used by SD1 and SDXL embedder 0."""
    return _prefixed("transformer.", _clip_text_model_sd(module))


_OPENCLIP_LAYER_PARTS = [
    ("self_attn.out_proj.", "attn.out_proj."),
    ("layer_norm1.", "ln_1."),
    ("layer_norm2.", "ln_2."),
    ("mlp.fc1.", "mlp.c_fc."),
    ("mlp.fc2.", "mlp.c_proj."),
]


def convert_openclip_to_original(module: torch.nn.Module) -> StateDict:
    """OpenCLIP layout (``model.*``: fused ``in_proj`` q/k/v, ``text_projection`` as a matrix).

    Used for the SD2 text encoder and the SDXL OpenCLIP-bigG encoder.
    """
    sd = _clip_text_model_sd(module)
    out: StateDict = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    layer_re = re.compile(r"^text_model\.encoder\.layers\.(\d+)\.(.+)$")
    for key, value in sd.items():
        if key == "text_model.embeddings.token_embedding.weight":
            out["token_embedding.weight"] = value
        elif key == "text_model.embeddings.position_embedding.weight":
            out["positional_embedding"] = value
        elif key.startswith("text_model.final_layer_norm."):
            out["ln_final." + key.rsplit(".", 1)[1]] = value
        elif key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
        elif m := layer_re.match(key):
            layer, rest = int(m.group(1)), m.group(2)
            qkv_m = re.match(r"^self_attn\.([qkv])_proj\.(weight|bias)$", rest)
            if qkv_m:
                qkv.setdefault((layer, qkv_m.group(2)), {})[qkv_m.group(1)] = value
                continue
            for src, dst in _OPENCLIP_LAYER_PARTS:
                if rest.startswith(src):
                    out[f"transformer.resblocks.{layer}.{dst}{rest[len(src):]}"] = value
                    break
            else:
                raise ValueError(f"cannot export text encoder key {key!r} to the OpenCLIP layout")
        else:
            raise ValueError(f"cannot export text encoder key {key!r} to the OpenCLIP layout")
    for (layer, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"text encoder layer {layer}: incomplete q/k/v {kind}")
        out[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def convert_t5_to_original(module: torch.nn.Module) -> StateDict:
    """T5 encoder layout of SD3 checkpoints (``transformer.*`` = the transformers state dict)."""
    # ``shared`` and ``encoder.embed_tokens`` are tied; safetensors refuses shared storage.
    return {"transformer." + k: v.clone() if k == "encoder.embed_tokens.weight" else v
            for k, v in _state_dict(module).items()}


# --------------------------------------------------------------------------------------------
# SD3 transformer (inverse of diffusers' convert_sd3_transformer_checkpoint_to_diffusers)
# --------------------------------------------------------------------------------------------


def _swap_halves(weight: torch.Tensor) -> torch.Tensor:
    # diffusers' AdaLayerNormContinuous is (scale, shift); SD3's original final norm is (shift, scale)
    first, second = weight.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def convert_sd3_transformer_to_original(sd: Mapping[str, torch.Tensor], config: Mapping) -> StateDict:
    """Map a diffusers ``SD3Transformer2DModel`` state dict to the original MMDiT layout."""
    sd = dict(sd)
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        used.add(key)
        return sd[key]

    def cat(*keys: str) -> torch.Tensor:
        return torch.cat([take(k) for k in keys], dim=0)

    out: StateDict = {
        "pos_embed": take("pos_embed.pos_embed"),
        "x_embedder.proj.weight": take("pos_embed.proj.weight"),
        "x_embedder.proj.bias": take("pos_embed.proj.bias"),
        "context_embedder.weight": take("context_embedder.weight"),
        "context_embedder.bias": take("context_embedder.bias"),
        "final_layer.linear.weight": take("proj_out.weight"),
        "final_layer.linear.bias": take("proj_out.bias"),
        "final_layer.adaLN_modulation.1.weight": _swap_halves(take("norm_out.linear.weight")),
        "final_layer.adaLN_modulation.1.bias": _swap_halves(take("norm_out.linear.bias")),
    }
    for src, dst in (("time_text_embed.timestep_embedder", "t_embedder"),
                     ("time_text_embed.text_embedder", "y_embedder")):
        for i, j in ((1, 0), (2, 2)):
            for p in ("weight", "bias"):
                out[f"{dst}.mlp.{j}.{p}"] = take(f"{src}.linear_{i}.{p}")

    n_layers = config["num_layers"]
    for i in range(n_layers):
        d, o = f"transformer_blocks.{i}.", f"joint_blocks.{i}."
        last = i == n_layers - 1
        for p in ("weight", "bias"):
            out[f"{o}x_block.attn.qkv.{p}"] = cat(*(f"{d}attn.to_{c}.{p}" for c in "qkv"))
            out[f"{o}context_block.attn.qkv.{p}"] = cat(*(f"{d}attn.add_{c}_proj.{p}" for c in "qkv"))
            out[f"{o}x_block.attn.proj.{p}"] = take(f"{d}attn.to_out.0.{p}")
            out[f"{o}x_block.adaLN_modulation.1.{p}"] = take(f"{d}norm1.linear.{p}")
            out[f"{o}x_block.mlp.fc1.{p}"] = take(f"{d}ff.net.0.proj.{p}")
            out[f"{o}x_block.mlp.fc2.{p}"] = take(f"{d}ff.net.2.{p}")
            context_norm = take(f"{d}norm1_context.linear.{p}")
            out[f"{o}context_block.adaLN_modulation.1.{p}"] = _swap_halves(context_norm) if last else context_norm
            if not last:
                out[f"{o}context_block.attn.proj.{p}"] = take(f"{d}attn.to_add_out.{p}")
                out[f"{o}context_block.mlp.fc1.{p}"] = take(f"{d}ff_context.net.0.proj.{p}")
                out[f"{o}context_block.mlp.fc2.{p}"] = take(f"{d}ff_context.net.2.{p}")
            if f"{d}attn2.to_q.{p}" in sd:  # SD3.5 Medium dual-attention layers
                out[f"{o}x_block.attn2.qkv.{p}"] = cat(*(f"{d}attn2.to_{c}.{p}" for c in "qkv"))
                out[f"{o}x_block.attn2.proj.{p}"] = take(f"{d}attn2.to_out.0.{p}")
        for src, dst in (("attn.norm_q", "x_block.attn.ln_q"), ("attn.norm_k", "x_block.attn.ln_k"),
                         ("attn.norm_added_q", "context_block.attn.ln_q"),
                         ("attn.norm_added_k", "context_block.attn.ln_k"),
                         ("attn2.norm_q", "x_block.attn2.ln_q"), ("attn2.norm_k", "x_block.attn2.ln_k")):
            if f"{d}{src}.weight" in sd:
                out[f"{o}{dst}.weight"] = take(f"{d}{src}.weight")
    _check_all_used("transformer", sd, used)
    return out


# --------------------------------------------------------------------------------------------
# Pipelines
# --------------------------------------------------------------------------------------------


def _unet_and_vae(pipe) -> StateDict:
    out = _prefixed("model.diffusion_model.", convert_unet_to_original(_state_dict(pipe.unet), pipe.unet.config))
    out.update(_prefixed("first_stage_model.", convert_vae_to_original(_state_dict(pipe.vae), pipe.vae.config)))
    return out


def pipeline_to_original_state_dict(pipe) -> StateDict:
    """Return the original-layout state dict (key -> tensor) of a diffusers pipeline.

    Supported: SD1/SD2 (``StableDiffusion*Pipeline``), SDXL base and refiner (``StableDiffusionXL*``
    pipelines; a refiner is a pipeline without ``text_encoder``) and SD3/SD3.5
    (``StableDiffusion3*Pipeline``).  Raises ``NotImplementedError`` for other pipelines and
    ``ValueError`` when a weight has no original-layout name.
    """
    components = getattr(pipe, "components", {})
    transformer = components.get("transformer")
    if transformer is not None and type(transformer).__name__ == "SD3Transformer2DModel":
        out = _prefixed("model.diffusion_model.", convert_sd3_transformer_to_original(
            _state_dict(pipe.transformer), pipe.transformer.config))
        out.update(_prefixed("first_stage_model.", convert_vae_to_original(_state_dict(pipe.vae), pipe.vae.config)))
        for attr, prefix in (("text_encoder", "text_encoders.clip_l."), ("text_encoder_2", "text_encoders.clip_g.")):
            if components.get(attr) is not None:
                out.update(_prefixed(prefix, convert_openai_clip_to_original(components[attr])))
        if components.get("text_encoder_3") is not None:
            out.update(_prefixed("text_encoders.t5xxl.", convert_t5_to_original(pipe.text_encoder_3)))
        return out

    if components.get("unet") is None or components.get("vae") is None:
        raise NotImplementedError(f"single-file export is not supported for {type(pipe).__name__}")

    out = _unet_and_vae(pipe)
    text_encoder = components.get("text_encoder")
    if "text_encoder_2" in components:  # SDXL family
        if text_encoder is not None:
            out.update(_prefixed("conditioner.embedders.0.", convert_openai_clip_to_original(text_encoder)))
            if components.get("text_encoder_2") is not None:
                out.update(_prefixed("conditioner.embedders.1.model.",
                                     convert_openclip_to_original(pipe.text_encoder_2)))
        elif components.get("text_encoder_2") is not None:  # refiner: OpenCLIP-bigG only
            out.update(_prefixed("conditioner.embedders.0.model.", convert_openclip_to_original(pipe.text_encoder_2)))
    elif text_encoder is not None:
        if getattr(text_encoder.config, "hidden_act", "") == "gelu":  # SD2: OpenCLIP-H
            out.update(_prefixed("cond_stage_model.model.", convert_openclip_to_original(text_encoder)))
        else:  # SD1: OpenAI CLIP-L
            out.update(_prefixed("cond_stage_model.", convert_openai_clip_to_original(text_encoder)))
    return out


_SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
for _name, _code in (("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2")):
    if hasattr(torch, _name):
        _SAFETENSORS_DTYPES[getattr(torch, _name)] = _code

_ALIGN = 64


def _write_safetensors_aligned(tensors: Mapping[str, torch.Tensor], path: pathlib.Path,
                               metadata: Mapping[str, str]) -> None:
    """Write a standard ``.safetensors`` file whose tensors start 64-byte aligned where possible.

    ``safetensors.torch.save_file`` packs tensors back to back, so after a memory-mapped load
    most weights sit at addresses that are not 64-byte aligned.  CPU BLAS kernels then take
    other code paths and a model loaded with ``from_single_file`` can give results that differ
    in the last bit from the same weights in fresh memory.  Here the header is padded (with
    spaces, as safetensors itself does) so that the data starts at a multiple of 64 bytes, the
    tensors whose size is a multiple of 64 bytes come first (all aligned), and the few others
    follow, largest element size first (natural alignment).  The format is unchanged: any
    safetensors reader loads the file.
    """
    def order(name: str) -> tuple:
        t = tensors[name]
        return (t.numel() * t.element_size()) % _ALIGN != 0, -t.element_size(), name

    names = sorted(tensors, key=order)
    header: dict[str, object] = {"__metadata__": dict(metadata)}
    offset = 0
    for name in names:
        t = tensors[name]
        if t.dtype not in _SAFETENSORS_DTYPES:
            raise ValueError(f"cannot write {name!r}: dtype {t.dtype} is not supported by safetensors")
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * ((-(8 + len(raw))) % _ALIGN)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name in names:
            t = tensors[name].detach().to("cpu").contiguous()
            f.write(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    os.replace(tmp, path)


def export_single_file(pipe, path: str | os.PathLike, dtype: torch.dtype | None = None,
                       metadata: Mapping[str, str] | None = None) -> pathlib.Path:
    """Write ``pipe`` as one original-layout ``.safetensors`` checkpoint at ``path``.

    The file loads back with ``<PipelineClass>.from_single_file(path, config=<diffusers folder>)``
    (bit-identical outputs for the built-in tiny models) and is classified by
    ``diffusers.loaders.single_file_utils.infer_diffusers_model_type``.  ``dtype`` optionally
    casts floating-point weights (e.g. ``torch.float16``); by default the weights keep the
    pipeline's dtype.  ``metadata`` (str -> str) goes into the safetensors header beside
    ``format: pt``.  Parent folders are created; the file is written atomically.  Returns
    the path.
    """
    path = pathlib.Path(path)
    tensors = {}
    for key, value in pipeline_to_original_state_dict(pipe).items():
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        tensors[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_safetensors_aligned(tensors, path, {**dict(metadata or {}), "format": "pt"})
    return path


def save_config_folder(pipe, folder: str | os.PathLike) -> pathlib.Path:
    """Write the pipeline's configs, tokenizers and processors to ``folder`` without any weights.

    This is what ``from_single_file(file, config=folder)`` reads besides the file, and what
    Easel finds beside a checkpoint (``<name>.config/``) to load it offline: a few KB instead
    of the weights again.
    """
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pipe.save_config(str(folder))  # model_index.json
    for name, component in pipe.components.items():
        if component is None:
            continue
        target = folder / name
        if isinstance(component, torch.nn.Module) and hasattr(component, "save_config"):
            component.save_config(str(target))  # diffusers models: config.json only
        elif isinstance(component, torch.nn.Module):
            component.config.save_pretrained(str(target))  # transformers models: config.json only
        elif hasattr(component, "save_pretrained"):
            component.save_pretrained(str(target))  # schedulers, tokenizers, image processors (no weights)
    return folder


def export_checkpoint(pipe, path: str | os.PathLike, dtype: torch.dtype | None = None,
                      metadata: Mapping[str, str] | None = None, config_sidecar: bool = True) -> pathlib.Path:
    """Write ``pipe`` as one original-layout ``.safetensors`` checkpoint (:func:`export_single_file`)
    and, with ``config_sidecar``, its configs beside it in ``<stem>.config/`` (:func:`save_config_folder`)
    so that Easel loads the file offline. Other tools (A1111, Forge, ComfyUI) need only the file.
    Returns the checkpoint's path."""
    import shutil

    path = pathlib.Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"a single-file checkpoint is written as .safetensors (got {path.name!r})")
    export_single_file(pipe, path, dtype=dtype, metadata=metadata)
    if config_sidecar:
        sidecar = path.with_name(path.stem + CONFIG_SIDECAR_SUFFIX)
        staging = path.with_name(f".{sidecar.name}-saving")
        shutil.rmtree(staging, ignore_errors=True)
        save_config_folder(pipe, staging)
        shutil.rmtree(sidecar, ignore_errors=True)
        os.replace(staging, sidecar)
    return path


def export_diffusers_folder(folder: str | os.PathLike, path: str | os.PathLike, dtype: torch.dtype | None = None,
                            metadata: Mapping[str, str] | None = None) -> pathlib.Path:
    """Load the local diffusers folder ``folder`` (on the CPU, never from the network) and write it
    with :func:`export_checkpoint` to ``path``. Returns the checkpoint's path."""
    from diffusers import DiffusionPipeline

    folder = pathlib.Path(folder)
    if not (folder / "model_index.json").is_file():
        raise ValueError(f"{folder} is not a diffusers folder (no model_index.json)")
    pipe = DiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    return export_checkpoint(pipe, path, dtype=dtype, metadata=metadata)
