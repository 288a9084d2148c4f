"""Background replacement measured on the demo model: the subject stays, the new background is what was asked."""

from __future__ import annotations

import numpy as np
import pytest

from extensions.background import engine, masks
from tools.demo_model.judge import foreground_mask, judge
from tools.demo_model.shapes import ShapeSpec, render
from webui.pipelines.sources import DEMO_MODEL_DIR, DEMO_MODEL_NAME

pytestmark = pytest.mark.skipif(not (DEMO_MODEL_DIR / "model_index.json").is_file(),
                                reason="the demo model's weights are not shipped yet (issue 6)")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_replacing_the_background_of_the_red_circle_with_green(context, seed):
    image = render(ShapeSpec(shape="circle", colour="red", background="blue", size="large"))
    subject = foreground_mask(image)  # the mask a user would draw or a detector would find
    options = engine.ReplaceOptions(background_prompt="a large red circle on a green background", model=DEMO_MODEL_NAME,
                                    sampler="Euler", steps=20, cfg_scale=5.0, seed=seed, work_side=128, save=False)
    result = engine.replace_background(context, image, subject, options)
    before, after = np.asarray(image), np.asarray(result.image)
    core = masks.grow(subject, -options.erode - 1)
    assert np.array_equal(after[core], before[core])  # the circle is pixel-identical
    verdict = judge(result.image)
    assert verdict.background == "green" and verdict.colour == "red", verdict
