"""Detector and segmenter backends of the background extension, on tiny random-weight models (offline)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from extensions.background import detect, segment


def scene(width=96, height=64):
    data = np.zeros((height, width, 3), np.uint8)
    data[:] = (30, 60, 200)
    data[16:48, 30:70] = (220, 30, 30)
    truth = np.zeros((height, width), bool)
    truth[16:48, 30:70] = True
    return Image.fromarray(data), truth


def test_grabcut_finds_the_subject_inside_its_box():
    image, truth = scene()
    mask = segment.GrabCutSegmenter().segment(image, [(24, 10, 76, 54)])
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.9
    assert not segment.GrabCutSegmenter().segment(image, []).any()
    whole = segment.GrabCutSegmenter().segment(image, [(0, 0, 96, 64)])   # box = whole image still works
    assert whole.shape == (64, 96)


def test_tiny_sam_round_trips_through_a_local_folder(tmp_path):
    image, _ = scene()
    tiny = segment.build_tiny_sam()
    tiny.model.save_pretrained(tmp_path)
    tiny.processor.save_pretrained(tmp_path)
    loaded = segment.SamSegmenter.load(str(tmp_path), local_only=True)
    assert loaded.kind == "sam"
    mask = loaded.segment(image, [(24, 10, 76, 54), (0, 0, 20, 20)])
    assert mask.shape == (64, 96) and mask.dtype == bool
    assert np.array_equal(mask, tiny.segment(image, [(24, 10, 76, 54), (0, 0, 20, 20)]))
    assert not loaded.segment(image, []).any()
    with pytest.raises(ValueError, match="not SAM"):
        detect.build_tiny_grounding_dino().model.save_pretrained(tmp_path / "gd")
        segment.SamSegmenter.load(str(tmp_path / "gd"), local_only=True)


def test_tiny_sam2_round_trips_through_a_local_folder(tmp_path):
    image, _ = scene()
    tiny = segment.build_tiny_sam2()
    tiny.model.save_pretrained(tmp_path)
    tiny.processor.save_pretrained(tmp_path)
    loaded = segment.SamSegmenter.load(str(tmp_path), local_only=True)
    assert loaded.kind == "sam2"
    boxes = [(24, 10, 76, 54), (0, 0, 20, 20)]
    mask = loaded.segment(image, boxes)
    assert mask.shape == (64, 96) and mask.dtype == bool
    assert np.array_equal(mask, tiny.segment(image, boxes))


def test_tiny_transformers_grounding_dino_detects_with_labels_and_scores(tmp_path):
    image, _ = scene()
    tiny = detect.build_tiny_grounding_dino()
    tiny.model.save_pretrained(tmp_path)
    tiny.processor.save_pretrained(tmp_path)
    loaded = detect.TransformersDetector.load(str(tmp_path), local_only=True)
    found = loaded.detect(image, "a red square", box_threshold=0.0, text_threshold=0.0)
    assert len(found) == 10  # every query at threshold 0
    for item in found:
        x0, y0, x1, y1 = item.box
        assert 0 <= x0 <= x1 <= 96 and 0 <= y0 <= y1 <= 64 and 0 <= item.score <= 1
    assert [d.score for d in found] == sorted((d.score for d in found), reverse=True)
    assert "red" in found[0].label or "square" in found[0].label
    assert loaded.detect(image, "a red square", box_threshold=1.01) == []
    assert loaded.detect(image, "   ") == []


def test_prompt_cleaning():
    assert detect.clean_prompt("The Dog. a ball") == "the dog . a ball ."
    assert detect.clean_prompt(" . ") == ""


groundingdino_missing = detect.groundingdino_py_available()


@pytest.mark.slow
@pytest.mark.skipif(groundingdino_missing is not None, reason=str(groundingdino_missing))
def test_tiny_groundingdino_py_loads_an_idea_checkpoint_and_detects(tmp_path):
    checkpoint, config = detect.write_tiny_groundingdino_py(tmp_path)
    detector = detect.GroundingDinoPyDetector.load(checkpoint, config)
    image, _ = scene()
    found = detector.detect(image, "a red square", box_threshold=0.0, text_threshold=0.0)
    assert len(found) == 10
    assert all(0 <= d.box[0] <= d.box[2] <= 96 and 0 <= d.box[1] <= d.box[3] <= 64 for d in found)
    assert detector.detect(image, "a red square", box_threshold=1.01) == []


@pytest.mark.slow
@pytest.mark.skipif(groundingdino_missing is not None, reason=str(groundingdino_missing))
def test_the_builtin_tiny_groundingdino_py_leaves_nothing_in_the_temporary_folder(tmp_path, monkeypatch):
    """The registry's built-in groundingdino-py model is written to a temporary folder, loaded and the
    folder removed: it still detects afterwards, and the temporary folder is empty again."""
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    detector = detect.build_tiny_groundingdino_py()
    assert list(scratch.iterdir()) == []
    image, _ = scene()
    assert len(detector.detect(image, "a red square", box_threshold=0.0, text_threshold=0.0)) == 10


def test_bert_shim_masks_like_transformers_4():
    import torch
    from transformers import BertConfig, BertModel

    detect.install_bert_shim()
    model = BertModel(BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=8))
    mask = torch.tensor([[1, 1, 0]])
    extended = model.get_extended_attention_mask(mask, (1, 3), "cpu")
    assert extended.shape == (1, 1, 1, 3)
    assert extended[0, 0, 0, 0] == 0 and extended[0, 0, 0, 2] == torch.finfo(torch.float32).min
    assert model.get_head_mask(None, 3) == [None] * 3


@pytest.mark.skipif(groundingdino_missing is not None, reason=str(groundingdino_missing))
def test_groundingdino_py_text_encoder_matches_bert_on_this_transformers():
    """The shimmed ``BertModelWarper`` gives BERT's own hidden states; a phrase mask masks."""
    import torch
    from groundingdino.models.GroundingDINO.bertwarper import BertModelWarper
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=20, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=16, attn_implementation="eager")).eval()
    warper = BertModelWarper(bert_model=bert)
    ids = torch.tensor([[2, 7, 9, 5, 3]])
    with torch.no_grad():
        expected = bert(input_ids=ids).last_hidden_state
        got = warper(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids),
                     position_ids=torch.arange(5)[None])["last_hidden_state"]
        assert torch.allclose(got, expected, atol=1e-5)
        # Grounding DINO's 3-D mask: token 1 may only see itself, so it differs from the full view.
        phrase = torch.ones(1, 5, 5)
        phrase[0, 1] = 0
        phrase[0, 1, 1] = 1
        masked = warper(input_ids=ids, attention_mask=phrase)["last_hidden_state"]
    assert torch.allclose(masked[0, 0], expected[0, 0], atol=1e-5)
    assert not torch.allclose(masked[0, 1], expected[0, 1], atol=1e-3)


def test_drop_in_extension_with_relative_sibling_imports_loads(tmp_path):
    """``from . import sibling`` inside an extension folder (the background extension does it)."""
    from webui.plugins import PluginHost

    folder = tmp_path / "relative_ext"
    folder.mkdir()
    (folder / "__init__.py").write_text('"""doc"""\nfrom . import first\n')
    (folder / "first.py").write_text("from . import second\nVALUE = second.VALUE\n")
    (folder / "second.py").write_text("VALUE = 42\n")
    host = PluginHost()
    host.load_folder(folder)
    assert host.extensions["relative_ext"].status == "loaded", host.extensions["relative_ext"].error
