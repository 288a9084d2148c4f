"""Easel: a Stable Diffusion web UI on diffusers where every feature is an extension."""

import os as _os

# Set before anything imports torch (every Easel module imports this package first): the
# CUDA caching allocator then grows segments instead of fragmenting (fewer OOMs at large sizes).
_os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

__version__ = "0.1.0"
