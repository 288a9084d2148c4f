"""background: text-prompted subject mask + background replacement (detect, segment, inpaint, composite)."""

EASEL_API_VERSION = "1.0"
