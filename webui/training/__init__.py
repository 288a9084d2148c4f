"""LoRA training (DreamBooth and captioned datasets) for SD1/SD2/SDXL/SD3, on accelerate.

* :mod:`webui.training.config` -- the JSON config file (the UI writes it, the trainer reads it);
* :mod:`webui.training.dataset` -- images and captions from a folder;
* :mod:`webui.training.trainer` -- the training loop;
* ``python -m webui.train --config FILE`` (or ``accelerate launch -m webui.train --config FILE``).
"""

from webui.training.config import ConfigError, TrainConfig, load_config, save_config
from webui.training.trainer import TrainResult, train

__all__ = ["ConfigError", "TrainConfig", "TrainResult", "load_config", "save_config", "train"]
