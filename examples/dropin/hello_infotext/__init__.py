"""Hello infotext: a drop-in example extension that signs every image's infotext.

Adds the setting ``hello_infotext.signature`` (Settings page, section "Examples") and, when
it is not empty, the field ``Signed: <signature>`` to the infotext of every image.
"""

from webui.api import Setting, hookimpl

EASEL_API_VERSION = "2.0"
SETTING = "hello_infotext.signature"


@hookimpl
def register_settings(register):
    """The signature written into every image's infotext (empty: none)."""
    register(Setting(key=SETTING, label="Signature in the infotext", default="", kind="text", section="Examples"))


@hookimpl
def infotext_fields(request, model):
    """``Signed: <signature>`` when the setting holds one.

    ``infotext_fields`` gets no context, so the value travels in ``request.extras``: the
    ``before_generation`` hook below copies the setting there for each job.
    """
    signature = request.extras.get(SETTING)
    return {"Signed": signature} if signature else None


@hookimpl
def before_generation(request, model, context):
    """Copy the signature setting into this job's ``extras`` (read by ``infotext_fields``)."""
    signature = context.setting(SETTING, "")
    if signature:
        request.extras[SETTING] = signature
