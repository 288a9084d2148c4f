"""Easel: a Stable Diffusion web UI on diffusers where every feature is an extension."""

__version__ = "0.1.0"
