"""AUTOMATIC1111 sampler and schedule-type names mapped onto diffusers schedulers.

A1111 (since 1.9) describes sampling with two names, a *sampler* (``"DPM++ 2M"``) and a
*schedule type* (``"Karras"``); older versions folded the schedule into the sampler name
(``"DPM++ 2M Karras"``).  Both spellings are accepted here.  Each scheduler is built from
the pipeline's own scheduler config with ``SchedulerClass.from_config(config, **overrides)``
so the model's betas, ``prediction_type`` (v-prediction for SD 2.x) and SD3's ``shift``
carry over; the overrides are only those that pick the algorithm and the schedule.

Mapping (after diffusers' own A1111 table and A1111's ``sd_samplers_kdiffusion.py``):

==================  =========================================================
A1111 name          diffusers
==================  =========================================================
Euler               EulerDiscreteScheduler
Euler a             EulerAncestralDiscreteScheduler
DPM++ 2M            DPMSolverMultistepScheduler(dpmsolver++, order 2)
DPM++ 2M SDE        DPMSolverMultistepScheduler(sde-dpmsolver++, order 2)
DPM++ SDE           DPMSolverSDEScheduler (needs the ``torchsde`` package)
DDIM                DDIMScheduler(clip_sample=False, set_alpha_to_one=False)
UniPC               UniPCMultistepScheduler
Heun                HeunDiscreteScheduler
LMS                 LMSDiscreteScheduler
PNDM (A1111 PLMS)   PNDMScheduler(skip_prk_steps=True)
DPM2                KDPM2DiscreteScheduler
DPM2 a              KDPM2AncestralDiscreteScheduler
DEIS                DEISMultistepScheduler
Flow Euler          FlowMatchEulerDiscreteScheduler (SD3)
Flow Heun           FlowMatchHeunDiscreteScheduler (SD3)
Flow DPM++ 2M       DPMSolverMultistepScheduler(use_flow_sigmas=True) (SD3)
Flow UniPC          UniPCMultistepScheduler(use_flow_sigmas=True) (SD3)
==================  =========================================================

Schedule types: ``Karras`` -> ``use_karras_sigmas``, ``Exponential`` ->
``use_exponential_sigmas``, ``Beta`` -> ``use_beta_sigmas``, ``SGM Uniform`` ->
``timestep_spacing="trailing"``, ``Uniform`` -> ``timestep_spacing="linspace"`` with none of
those flags (what k-diffusion's default schedule is); DDIM and PNDM only offer
``SGM Uniform`` besides their own default, because they step with a fixed stride that does
not fit ``linspace`` timesteps.  ``Automatic`` means what A1111 does
for the sampler: Karras for DPM++ 2M, DPM++ SDE, DPM2 and DPM2 a, Exponential for
DPM++ 2M SDE, Uniform for Euler, Euler a, Heun and LMS, and the model's own config for
DDIM, PNDM, UniPC, DEIS and the flow-matching samplers.  :func:`resolve_sampler` tells
which concrete schedule that is, for the infotext.

The base config of the first scheduler built is remembered inside every scheduler this
module makes (in the private config key ``_easel_base_config``), so building again from
``pipe.scheduler.config`` after any number of switches starts from the model's original
config, not from the previous sampler's overrides.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffusers.schedulers.scheduling_utils import SchedulerMixin

from webui.pipelines.families import FAMILIES, FAMILY_TABLE

__all__ = [
    "SAMPLERS",
    "SCHEDULE_TYPES",
    "FAMILIES",
    "UnknownSamplerError",
    "SamplerUnavailableError",
    "UnsupportedScheduleTypeError",
    "samplers_for",
    "schedule_types_for",
    "resolve_sampler",
    "make_scheduler",
    "is_sampler_available",
]

_FLOW_FAMILIES = frozenset(name for name, family in FAMILY_TABLE.items() if family.flow_matching)

SCHEDULE_TYPES: list[str] = ["Automatic", "Uniform", "Karras", "Exponential", "SGM Uniform", "Beta"]

BASE_CONFIG_KEY = "_easel_base_config"

_ALL_SCHEDULES = ("Uniform", "Karras", "Exponential", "SGM Uniform", "Beta")
_SPACING_SCHEDULES = ("Uniform", "SGM Uniform")
# DDIM and PNDM step by a fixed stride of num_train_timesteps // steps, which only matches the
# "leading" (their default) and "trailing" spacings; "linspace" would misplace every step.
_STRIDE_SCHEDULES = ("SGM Uniform",)
_FLOW_SIGMA_SCHEDULES = ("Uniform", "Karras", "Exponential", "Beta")

_SIGMA_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
_SCHEDULE_OVERRIDES: dict[str, dict[str, Any]] = {
    "Uniform": {"timestep_spacing": "linspace"},
    "Karras": {"use_karras_sigmas": True},
    "Exponential": {"use_exponential_sigmas": True},
    "Beta": {"use_beta_sigmas": True},
    "SGM Uniform": {"timestep_spacing": "trailing"},
}


@dataclass(frozen=True)
class _Sampler:
    module: str  # diffusers.schedulers.<module>
    class_name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    schedules: tuple[str, ...] = ()  # schedule types besides "Automatic"
    automatic: str | None = None  # what "Automatic" means (None: the model's config)
    flow: bool = False
    requires: str | None = None  # extra package needed
    alias_of: tuple[str, str] | None = None  # legacy name: (sampler, schedule type)


_DPMPP = {
    "solver_order": 2,
    "solver_type": "midpoint",
    "lower_order_final": True,
    "euler_at_final": False,
    "use_lu_lambdas": False,
    "use_flow_sigmas": False,
    "final_sigmas_type": "zero",
    "thresholding": False,
    "variance_type": None,
}
_FLOW_MULTISTEP = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}

_SPECS: dict[str, _Sampler] = {
    "Euler": _Sampler("scheduling_euler_discrete", "EulerDiscreteScheduler",
                      {"final_sigmas_type": "zero"}, _ALL_SCHEDULES, "Uniform"),
    "Euler a": _Sampler("scheduling_euler_ancestral_discrete", "EulerAncestralDiscreteScheduler",
                        {}, _SPACING_SCHEDULES, "Uniform"),
    "DPM++ 2M": _Sampler("scheduling_dpmsolver_multistep", "DPMSolverMultistepScheduler",
                         {**_DPMPP, "algorithm_type": "dpmsolver++"}, _ALL_SCHEDULES, "Karras"),
    "DPM++ 2M Karras": _Sampler("", "", alias_of=("DPM++ 2M", "Karras")),
    "DPM++ 2M SDE": _Sampler("scheduling_dpmsolver_multistep", "DPMSolverMultistepScheduler",
                             {**_DPMPP, "algorithm_type": "sde-dpmsolver++"}, _ALL_SCHEDULES, "Exponential"),
    "DPM++ SDE": _Sampler("scheduling_dpmsolver_sde", "DPMSolverSDEScheduler",
                          {}, _ALL_SCHEDULES, "Karras", requires="torchsde"),
    "DPM++ SDE Karras": _Sampler("", "", alias_of=("DPM++ SDE", "Karras")),
    "DDIM": _Sampler("scheduling_ddim", "DDIMScheduler",
                     {"clip_sample": False, "set_alpha_to_one": False, "thresholding": False}, _STRIDE_SCHEDULES),
    "UniPC": _Sampler("scheduling_unipc_multistep", "UniPCMultistepScheduler",
                      {"use_flow_sigmas": False, "thresholding": False}, _ALL_SCHEDULES),
    "Heun": _Sampler("scheduling_heun_discrete", "HeunDiscreteScheduler",
                     {"clip_sample": False}, _ALL_SCHEDULES, "Uniform"),
    "LMS": _Sampler("scheduling_lms_discrete", "LMSDiscreteScheduler", {}, _ALL_SCHEDULES, "Uniform"),
    "PNDM": _Sampler("scheduling_pndm", "PNDMScheduler",
                     {"skip_prk_steps": True, "set_alpha_to_one": False}, _STRIDE_SCHEDULES),
    "DPM2": _Sampler("scheduling_k_dpm_2_discrete", "KDPM2DiscreteScheduler", {}, _ALL_SCHEDULES, "Karras"),
    "DPM2 a": _Sampler("scheduling_k_dpm_2_ancestral_discrete", "KDPM2AncestralDiscreteScheduler",
                       {}, _ALL_SCHEDULES, "Karras"),
    "DEIS": _Sampler("scheduling_deis_multistep", "DEISMultistepScheduler",
                     {"use_flow_sigmas": False, "thresholding": False}, _ALL_SCHEDULES),
    "Flow Euler": _Sampler("scheduling_flow_match_euler_discrete", "FlowMatchEulerDiscreteScheduler",
                           {"stochastic_sampling": False, "invert_sigmas": False}, _FLOW_SIGMA_SCHEDULES, flow=True),
    "Flow Heun": _Sampler("scheduling_flow_match_heun_discrete", "FlowMatchHeunDiscreteScheduler",
                          {}, ("Uniform",), flow=True),
    "Flow DPM++ 2M": _Sampler("scheduling_dpmsolver_multistep", "DPMSolverMultistepScheduler",
                              {**_DPMPP, **_FLOW_MULTISTEP, "algorithm_type": "dpmsolver++"}, ("Uniform",), flow=True),
    "Flow UniPC": _Sampler("scheduling_unipc_multistep", "UniPCMultistepScheduler",
                           {**_FLOW_MULTISTEP, "thresholding": False}, ("Uniform",), flow=True),
}

SAMPLERS: list[str] = list(_SPECS)
"""Every sampler name this module knows, in display order (availability not checked)."""

# Other spellings accepted on input (lower-case): A1111's API aliases and old names.
_ALIASES = {
    "k_euler": "Euler",
    "k_euler_a": "Euler a",
    "k_euler_ancestral": "Euler a",
    "euler_a": "Euler a",
    "euler ancestral": "Euler a",
    "k_lms": "LMS",
    "k_heun": "Heun",
    "k_dpm_2": "DPM2",
    "k_dpm_2_a": "DPM2 a",
    "k_dpmpp_2m": "DPM++ 2M",
    "k_dpmpp_2m_ka": "DPM++ 2M Karras",
    "k_dpmpp_sde": "DPM++ SDE",
    "k_dpmpp_sde_ka": "DPM++ SDE Karras",
    "k_dpmpp_2m_sde": "DPM++ 2M SDE",
    "k_dpmpp_2m_sde_ka": "DPM++ 2M SDE Karras",
    "plms": "PNDM",
    "unipc": "UniPC",
}
# A1111 and Forge call the SD3 samplers by the plain names; map them for flow families.
_FLOW_ALIASES = {
    "euler": "Flow Euler",
    "heun": "Flow Heun",
    "dpm++ 2m": "Flow DPM++ 2M",
    "unipc": "Flow UniPC",
}
_LEGACY_SUFFIXES = {" karras": "Karras", " exponential": "Exponential"}


class UnknownSamplerError(ValueError):
    """A sampler name that is not known for the model family; the message lists the valid ones."""

    def __init__(self, sampler: str, family: str = "sd1", message: str | None = None):
        self.sampler = sampler
        self.family = family
        self.valid = samplers_for(family) if family in FAMILIES else []
        if message is None:
            message = f"unknown sampler {sampler!r} for {family!r}"
        super().__init__(f"{message}; valid samplers for {family!r}: {', '.join(self.valid)}")


class SamplerUnavailableError(UnknownSamplerError):
    """A known sampler whose extra package is not installed (e.g. ``DPM++ SDE`` needs torchsde)."""


class UnsupportedScheduleTypeError(ValueError):
    """A schedule type the sampler cannot use (or an unknown one); the message lists the valid ones."""


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; expected one of {', '.join(FAMILIES)}")


@lru_cache(maxsize=None)
def _package_available(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def is_sampler_available(sampler: str) -> bool:
    """Whether the packages a sampler needs are installed (``DPM++ SDE`` needs ``torchsde``).

    Unknown names give ``False``.
    """
    spec = _SPECS.get(sampler)
    if spec is None:
        return False
    if spec.alias_of:
        spec = _SPECS[spec.alias_of[0]]
    return spec.requires is None or _package_available(spec.requires)


def samplers_for(family: str) -> list[str]:
    """Sampler names offered for a model family, in display order.

    SD3 (``"sd3"``) gets the flow-matching samplers; ``"sd1"``, ``"sd2"``, ``"sdxl"`` and
    ``"sdxl-refiner"`` get the others.  Samplers whose extra package is missing are left out.

    Raises:
        ValueError: unknown family.
    """
    _check_family(family)
    flow = family in _FLOW_FAMILIES
    result = []
    for name, spec in _SPECS.items():
        target = _SPECS[spec.alias_of[0]] if spec.alias_of else spec
        if target.flow == flow and is_sampler_available(name):
            result.append(name)
    return result


def _lookup(sampler: str, family: str) -> tuple[str, str | None]:
    """Map any accepted spelling to ``(canonical sampler, schedule type implied by the name)``."""
    flow = family in _FLOW_FAMILIES
    by_lower = {key.lower(): key for key in _SPECS}

    def plain(key: str) -> str | None:
        if flow and key in _FLOW_ALIASES:
            return _FLOW_ALIASES[key]
        return by_lower.get(_ALIASES.get(key, key).lower())

    lowered = " ".join(str(sampler).split()).lower()
    lowered = _ALIASES.get(lowered, lowered).lower()  # aliases may name a legacy spelling
    implied: str | None = None
    found = plain(lowered)
    if found is None:
        for suffix, schedule in _LEGACY_SUFFIXES.items():
            if lowered.endswith(suffix):
                found = plain(lowered[: -len(suffix)])
                implied = schedule
                break
    if found is None:
        raise UnknownSamplerError(sampler, family)
    spec = _SPECS[found]
    if spec.alias_of:
        found, implied_by_alias = spec.alias_of
        if implied is not None and implied != implied_by_alias:
            raise UnknownSamplerError(sampler, family)
        implied = implied_by_alias
        spec = _SPECS[found]
    if spec.flow != flow:
        raise UnknownSamplerError(sampler, family)
    if implied is not None and implied not in spec.schedules:
        raise UnknownSamplerError(sampler, family)
    return found, implied


def _normalize_schedule(schedule_type: str | None) -> str:
    if schedule_type is None or not str(schedule_type).strip():
        return "Automatic"
    lowered = " ".join(str(schedule_type).split()).lower()
    for name in SCHEDULE_TYPES:
        if name.lower() == lowered:
            return name
    aliases = {"sgm_uniform": "SGM Uniform", "sgm-uniform": "SGM Uniform", "trailing": "SGM Uniform",
               "default": "Automatic", "auto": "Automatic"}
    return aliases.get(lowered, str(schedule_type))


def schedule_types_for(sampler: str, family: str = "sd1") -> list[str]:
    """Schedule types the sampler supports, ``"Automatic"`` first, in ``SCHEDULE_TYPES`` order.

    Raises:
        UnknownSamplerError: unknown sampler for that family.
        ValueError: unknown family.
    """
    _check_family(family)
    canonical, implied = _lookup(sampler, family)
    if implied is not None:  # legacy name such as "DPM++ 2M Karras": the schedule is fixed
        return ["Automatic", implied]
    supported = _SPECS[canonical].schedules
    return [name for name in SCHEDULE_TYPES if name == "Automatic" or name in supported]


def resolve_sampler(sampler: str, schedule_type: str = "Automatic", family: str = "sd1") -> tuple[str, str]:
    """Canonical ``(sampler, schedule type)`` as A1111 1.9+ writes them in infotext.

    Legacy names are split (``"DPM++ 2M Karras"`` -> ``("DPM++ 2M", "Karras")``),
    aliases are resolved (``"k_euler_a"`` -> ``"Euler a"``; ``"Euler"`` for SD3 ->
    ``"Flow Euler"``) and ``"Automatic"`` becomes the schedule it stands for
    (``("DPM++ 2M", "Automatic")`` -> ``("DPM++ 2M", "Karras")``).  Where it stands for the
    model's own config (DDIM, PNDM, UniPC, DEIS, flow samplers) it stays ``"Automatic"``.

    Raises:
        UnknownSamplerError: unknown sampler for that family.
        UnsupportedScheduleTypeError: unknown schedule type, one the sampler does not
            support, or one that contradicts a legacy name (``"DPM++ 2M Karras"`` with
            ``"Exponential"``).
        ValueError: unknown family.
    """
    _check_family(family)
    canonical, implied = _lookup(sampler, family)
    spec = _SPECS[canonical]
    schedule = _normalize_schedule(schedule_type)
    if schedule not in SCHEDULE_TYPES or (schedule != "Automatic" and schedule not in spec.schedules):
        valid = ["Automatic", *[name for name in SCHEDULE_TYPES if name in spec.schedules]]
        raise UnsupportedScheduleTypeError(
            f"schedule type {schedule_type!r} is not supported by sampler {canonical!r}; "
            f"valid schedule types: {', '.join(valid)}"
        )
    if implied is not None:
        if schedule not in ("Automatic", implied):
            raise UnsupportedScheduleTypeError(
                f"sampler name {sampler!r} already implies schedule type {implied!r}, "
                f"but {schedule_type!r} was asked for; use {canonical!r} with the schedule type instead"
            )
        schedule = implied
    if schedule == "Automatic" and spec.automatic is not None:
        schedule = spec.automatic
    return canonical, schedule


@lru_cache(maxsize=None)
def _scheduler_class(module: str, class_name: str) -> type[SchedulerMixin]:
    return getattr(importlib.import_module(f"diffusers.schedulers.{module}"), class_name)


def _init_params(cls: type) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - {"self", "args", "kwargs"}


def _is_flow_config(config: Mapping[str, Any]) -> bool:
    class_name = str(config.get("_class_name") or "")
    return (
        class_name.startswith("FlowMatch")
        or bool(config.get("use_flow_sigmas"))
        or config.get("prediction_type") == "flow_prediction"
    )


def _base_config(base_config: Mapping[str, Any]) -> dict[str, Any]:
    from diffusers.schedulers.scheduling_utils import SchedulerMixin

    if isinstance(base_config, SchedulerMixin):
        base_config = base_config.config
    if not isinstance(base_config, Mapping):
        raise TypeError(f"base_config must be a scheduler config mapping, got {type(base_config).__name__}")
    stored = base_config.get(BASE_CONFIG_KEY)
    config = dict(stored) if isinstance(stored, Mapping) else dict(base_config)
    config.pop(BASE_CONFIG_KEY, None)
    return config


def make_scheduler(
    base_config: Mapping[str, Any],
    sampler: str,
    schedule_type: str = "Automatic",
    family: str = "sd1",
    *,
    seed: int | None = None,
) -> SchedulerMixin:
    """Build the diffusers scheduler for an A1111 sampler name and schedule type.

    Args:
        base_config: the pipeline's scheduler config (``pipe.scheduler.config``, a dict or
            FrozenDict; a scheduler instance is accepted too).  Betas, ``prediction_type``,
            ``steps_offset``, SD3's ``shift`` and so on come from it.  A config of a
            scheduler made by this function is traced back to the original it was made
            from, so switching samplers repeatedly never accumulates overrides.
        sampler: a name from :func:`samplers_for`, a legacy name such as
            ``"DPM2 a Karras"``, an A1111 alias such as ``"k_dpmpp_2m"`` (case does not
            matter), or for SD3 A1111's plain ``"Euler"``/``"Heun"``/``"DPM++ 2M"``.
        schedule_type: one of :data:`SCHEDULE_TYPES` that the sampler supports (see
            :func:`schedule_types_for`).
        family: ``"sd1"``, ``"sd2"``, ``"sdxl"``, ``"sdxl-refiner"`` or ``"sd3"``.
        seed: seed for samplers with their own noise source (``DPM++ SDE``'s Brownian
            tree); pass the generation seed for reproducible images (default 0).  Other
            stochastic samplers take the pipeline's ``generator``.

    Returns:
        A new scheduler instance, ready for ``pipe.scheduler = ...``.

    Raises:
        UnknownSamplerError: unknown sampler for the family (the message lists valid ones).
        SamplerUnavailableError: the sampler needs a package that is not installed
            (``DPM++ SDE`` needs ``torchsde``).
        UnsupportedScheduleTypeError: the sampler does not support that schedule type.
        ValueError: unknown family, or a base config of the other kind (a flow-matching
            config for SD1/SD2/SDXL or the reverse), or SD3 dynamic shifting with a sampler
            that cannot do it.
    """
    canonical, schedule = resolve_sampler(sampler, schedule_type, family)
    spec = _SPECS[canonical]
    if spec.requires and not _package_available(spec.requires):
        raise SamplerUnavailableError(
            sampler,
            family,
            f"sampler {canonical!r} needs the {spec.requires!r} package (pip install {spec.requires})",
        )

    config = _base_config(base_config)
    flow_config = _is_flow_config(config)
    if flow_config and not spec.flow:
        raise ValueError(
            f"the base scheduler config ({config.get('_class_name', 'unknown class')}) is a flow-matching "
            f"config, but family {family!r} uses noise-prediction samplers; is the model really {family}?"
        )
    if spec.flow and not flow_config and config.get("_class_name"):
        raise ValueError(
            f"the base scheduler config ({config['_class_name']}) is not a flow-matching config, "
            f"but family {family!r} needs one"
        )

    cls = _scheduler_class(spec.module, spec.class_name)
    accepted = _init_params(cls)

    overrides: dict[str, Any] = dict(spec.overrides)
    # Start every build from "no special sigmas" so nothing leaks from the base config.
    for flag in _SIGMA_FLAGS:
        overrides[flag] = False
    if schedule in _SCHEDULE_OVERRIDES:
        overrides.update(_SCHEDULE_OVERRIDES[schedule])

    if spec.flow:
        shift = config.get("shift", config.get("flow_shift", 1.0))
        overrides["shift" if "shift" in accepted else "flow_shift"] = shift
        if config.get("use_dynamic_shifting") and "use_dynamic_shifting" not in accepted:
            raise ValueError(
                f"sampler {canonical!r} does not support the dynamic shifting this model's scheduler uses"
            )
    if "noise_sampler_seed" in accepted:
        overrides["noise_sampler_seed"] = 0 if seed is None else int(seed)

    unknown = set(overrides) - accepted
    for key in unknown:
        if key not in _SIGMA_FLAGS and key != "timestep_spacing":
            raise AssertionError(f"internal: {cls.__name__} does not take {key!r}")  # pragma: no cover
        overrides.pop(key)

    build_config = dict(config)
    build_config[BASE_CONFIG_KEY] = dict(config)
    return cls.from_config(build_config, **overrides)


def sampler_aliases(sampler: str) -> list[str]:
    """Other names accepted for ``sampler`` on input (A1111's ``k_...`` names), for API listings."""
    return sorted(alias for alias, target in _ALIASES.items() if target == sampler)
