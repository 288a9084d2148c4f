"""A short LoRA run on the demo model teaches it a shape it never saw, and only that.

The base model was trained without hearts (``HELD_OUT_SHAPES``), and its vocabulary has
the unused tokens "sks" and "shape". A LoRA trained through Easel's own trainer on hearts
captioned "a large red sks shape on a blue background", with ordinary captioned shapes
beside them (regularization images in the dataset, as in kohya's ``1_<name>`` folders), must
make "sks shape" prompts draw hearts at fixed seeds, while ordinary prompts keep the colour
and shape they had without the LoRA. Images are drawn through ``context.generate`` with
A1111's ``<lora:name:1>`` tag and judged by the classical template judge.
"""

from __future__ import annotations

import pytest

from tools.demo_model.evaluate import easel_drawer, eval_prompts, judgements, profile_context
from tools.demo_model.judge import template_shape
from tools.demo_model.shapes import COLOURS, sample
from webui.pipelines.sources import DEMO_MODEL_DIR, DEMO_MODEL_NAME
from webui.training import TrainConfig, train

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (DEMO_MODEL_DIR / "model_index.json").is_file(), reason="the demo model is not shipped"),
]

LORA_NAME = "sks_heart"
CONCEPT_PAIRS = 16
OTHER_PAIRS = 16
# Measured (docs/benchmarks.md, "Offline demo model"), 600 steps: hearts 0/16 before and 12/16
# after; ordinary prompts 16/16 colours and 15/16 shapes both before and after (800 steps: 13/16
# hearts; with training seed 2, shapes 13/16, so shapes may lose two images).
MIN_HEARTS_AFTER = 10
MAX_HEARTS_BEFORE = 1
MAY_LOSE = {"colours": 1, "shape": 2}


def concept_prompts() -> list[tuple[str, int]]:
    """Fixed (prompt, seed) pairs asking for the taught concept in varied colours."""
    names = list(COLOURS)
    pairs = []
    for index in range(CONCEPT_PAIRS):
        colour, background = names[index % len(names)], names[(index * 3 + 1) % len(names)]
        if background == colour:
            background = names[(index + 5) % len(names)]
        pairs.append((f"a large {colour} sks shape on a {background} background", 300 + index))
    return pairs


def write_dataset(folder, hearts: int = 32, ordinary: int = 64):
    """kohya layout: ``2_sks/`` hearts captioned "sks shape", ``1_shapes/`` the usual shapes."""
    concept, regular = folder / "2_sks", folder / "1_shapes"
    concept.mkdir(parents=True)
    regular.mkdir()
    for index in range(hearts):
        image, caption, _ = sample(5151, index, 128, ("heart",))
        image.save(concept / f"heart{index:03d}.png")
        (concept / f"heart{index:03d}.txt").write_text(caption.replace("heart", "sks shape"), encoding="utf-8")
    for index in range(ordinary):
        image, caption, _ = sample(6161, index, 128)
        image.save(regular / f"shape{index:03d}.png")
        (regular / f"shape{index:03d}.txt").write_text(caption, encoding="utf-8")
    return folder


def hearts_drawn(draw) -> int:
    return sum(template_shape(draw(prompt, seed)) == "heart" for prompt, seed in concept_prompts())


def test_a_lora_teaches_the_held_out_heart_and_other_prompts_keep_theirs(tmp_path):
    context = profile_context(tmp_path, "none")
    try:
        draw = easel_drawer(context, DEMO_MODEL_NAME)
        others = eval_prompts(OTHER_PAIRS)
        hearts_before = hearts_drawn(draw)
        others_before = judgements(draw, others)
        assert hearts_before <= MAX_HEARTS_BEFORE

        config = TrainConfig(model=DEMO_MODEL_NAME, models_dir=str(context.models_dir),
                             dataset_dir=str(write_dataset(tmp_path / "data")), output_name=LORA_NAME,
                             run_dir=str(tmp_path / "run"), resolution=128, rank=8, alpha=8.0,
                             train_text_encoder=True, learning_rate=2e-3, lr_scheduler="cosine", lr_warmup_steps=20,
                             max_steps=600, batch_size=4, checkpoint_every=0, seed=1, device="cpu")
        result = train(config)
        assert result.status == "done" and config.output_file.is_file()

        def with_lora(prompt: str, seed: int):
            return draw(f"{prompt} <lora:{LORA_NAME}:1>", seed)

        hearts_after = hearts_drawn(with_lora)
        others_after = judgements(with_lora, others)
    finally:
        context.pipelines.unload_all()

    print(f"hearts {hearts_before}/{CONCEPT_PAIRS} before, {hearts_after}/{CONCEPT_PAIRS} after; ordinary prompts "
          + ", ".join(f"{key} {sum(v[key] for v in others_before)} -> {sum(v[key] for v in others_after)}"
                      for key in MAY_LOSE))
    assert hearts_after >= MIN_HEARTS_AFTER, (hearts_before, hearts_after)
    for key, allowed in MAY_LOSE.items():
        before = sum(verdict[key] for verdict in others_before)
        after = sum(verdict[key] for verdict in others_after)
        assert after >= before - allowed, (key, before, after)
