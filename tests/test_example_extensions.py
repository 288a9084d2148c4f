"""The example extensions under examples/: an installable package (pip, entry point) and a
drop-in folder. Both are loaded the way a user's would be, and judged on what they produce.
Written with the fixtures authors get from ``webui.testing`` (``easel_app``, ``easel_run_job``,
``easel_server``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@pytest.fixture
def installed_example(tmp_path, monkeypatch):
    """``pip install examples/easel-seed-explorer`` into a folder put on sys.path (not into the venv)."""
    target = tmp_path / "site"
    source = shutil.copytree(EXAMPLES / "easel-seed-explorer", tmp_path / "source")  # building writes beside it
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(source)], check=True)
    assert (target / "easel_seed_explorer" / "__init__.py").exists()
    monkeypatch.syspath_prepend(str(target))
    yield target
    sys.modules.pop("easel_seed_explorer", None)


@pytest.mark.slow
def test_installed_package_is_found_and_its_tab_makes_seeded_images(installed_example, easel_server, easel_run_job):
    from webui.outputs import read_infotext

    server = easel_server(entry_points=True)
    info = {item.name: item for item in server["context"].extensions()}
    assert "seed_explorer" in info and info["seed_explorer"].origin == "package", info.get("seed_explorer")
    assert info["seed_explorer"].status == "loaded"
    images, status = server["client"].predict("a red circle", "tiny", 5, 2, 64, 2, api_name="/seed_explorer")
    assert "seeds 5 to 6" in status and len(images) == 2
    saved = sorted((Path(server["context"].outputs_dir)).rglob("*.png"))
    assert len(saved) == 2
    texts = [read_infotext(path) for path in saved]
    assert "Seed explorer: 5+0" in texts[0] and "Seed: 5" in texts[0]
    assert "Seed explorer: 5+1" in texts[1] and "Seed: 6" in texts[1]
    # the explorer's image for seed 6 is the plain txt2img image for seed 6
    from PIL import Image

    plain = easel_run_job(server["context"], prompt="a red circle", model="tiny", seed=6, steps=2)
    assert "Seed explorer" not in plain.images[0].infotext, "the field is only on the explorer's own jobs"
    assert np.array_equal(np.asarray(Image.open(saved[1]).convert("RGB")),
                          np.asarray(plain.images[0].image.convert("RGB")))


def test_dropin_folder_extension_signs_the_infotext(easel_app, easel_run_job):
    context = easel_app(extra_extension_dirs=[EXAMPLES / "dropin"])
    loaded = {item.name: item for item in context.extensions()}
    assert loaded["hello_infotext"].status == "loaded" and loaded["hello_infotext"].origin == "folder"
    assert "Signed" not in easel_run_job(context).images[0].infotext
    context.set_setting("hello_infotext.signature", "Ada")
    assert "Signed: Ada" in easel_run_job(context).images[0].infotext
