"""A LoRA trained on the demo model teaches it a shape it never saw, and only that.

The base training set leaves the heart out. A short DreamBooth-style LoRA run on hearts
captioned "... sks shape ..." must make "sks shape" prompts draw hearts (judged by template
matching) at fixed seeds, while ordinary prompts keep their colours and shapes.
"""

from __future__ import annotations

import numpy as np
import pytest

from webui.demo_model.evaluate import adherence, easel_drawer, eval_prompts, judgements
from webui.demo_model.judge import template_shape
from webui.demo_model.shapes import ShapeSpec, render, sample_spec
from webui.pipelines.sources import DEMO_MODEL_DIR, DEMO_MODEL_NAME

pytestmark = pytest.mark.skipif(not (DEMO_MODEL_DIR / "model_index.json").is_file(),
                                reason="the demo model's weights are not shipped yet (issue 6)")
from webui.training import TrainConfig, train

SKS_PROMPTS = [f"a large {colour} sks shape on a {background} background"
               for colour, background in (("red", "blue"), ("yellow", "purple"), ("white", "black"),
                                          ("green", "pink"))]
SEEDS = (11, 12, 13, 14)
OTHER_PAIRS = 12


def heart_dataset(folder, count=32, seed=5):
    """Hearts in every colour, size and position, captioned as the rare token "sks shape"."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        spec = sample_spec(rng, shapes=("heart",))
        render(spec).save(folder / f"heart{index:02d}.png")
        (folder / f"heart{index:02d}.txt").write_text(spec.caption().replace("heart", "sks shape"))
    return folder


def heart_fraction(draw, lora_tag=""):
    shapes = [template_shape(draw(f"{prompt} {lora_tag}".strip(), seed)) for prompt in SKS_PROMPTS for seed in SEEDS]
    return sum(shape == "heart" for shape in shapes) / len(shapes)


@pytest.mark.slow
def test_a_lora_teaches_the_held_out_heart_and_leaves_other_prompts_alone(make_context, tmp_path):
    context = make_context()
    draw = easel_drawer(context, DEMO_MODEL_NAME)
    before = heart_fraction(draw)
    config = TrainConfig(model=DEMO_MODEL_NAME, models_dir=str(context.models_dir),
                         dataset_dir=str(heart_dataset(tmp_path / "hearts")), output_name="sks_heart",
                         run_dir=str(tmp_path / "run"), resolution=128, rank=8, alpha=8.0, learning_rate=1e-3,
                         lr_scheduler="constant", max_steps=150, batch_size=4, checkpoint_every=0, seed=1,
                         device="cpu")
    result = train(config)
    assert result.status == "done" and (context.lora_dir / "sks_heart.safetensors").is_file()
    after = heart_fraction(draw, "<lora:sks_heart:1>")
    assert after >= 0.6 and after >= before + 0.4, (before, after)

    pairs = eval_prompts(OTHER_PAIRS)
    plain = adherence(judgements(draw, pairs))
    with_lora = adherence(judgements(lambda caption, seed: draw(f"{caption} <lora:sks_heart:1>", seed), pairs))
    assert with_lora["colours"] >= plain["colours"] - 2 / OTHER_PAIRS, (plain, with_lora)
    assert with_lora["shape"] >= plain["shape"] - 2 / OTHER_PAIRS, (plain, with_lora)
