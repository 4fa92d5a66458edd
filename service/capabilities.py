"""Checks a job's input against its model's capabilities before anything goes upstream."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from service.errors import InvalidRequest
from service.providers.base import InputRefused, ModelSpec, ProviderAdapter

ASPECT_RATIOS = ("16:9", "9:16", "1:1", "4:3", "3:4", "21:9", "9:21", "adaptive")
RESOLUTIONS = ("480p", "720p", "1080p")
_ALWAYS = frozenset({"prompt", "duration", "resolution", "aspect_ratio", "provider_options"})
# JSON types a provider option may declare, as Python checks (a bool is no integer here, as in JSON).
_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}
_LISTS = {
    "reference_images": "max_reference_images",
    "reference_videos": "max_reference_videos",
    "reference_audios": "max_reference_audios",
}


def refuse(spec: ModelSpec, field: str, message: str, allowed: Any) -> InvalidRequest:
    return InvalidRequest(
        f"input.{field}: {message} for {spec.id}; allowed: {allowed}",
        details={"field": f"input.{field}", "model": spec.id, "allowed": allowed},
    )


def check_input(spec: ModelSpec, given: dict[str, Any]) -> None:
    """Raise InvalidRequest naming the first field the model cannot serve and its allowed values."""
    duration = given.get("duration")
    if duration is not None and duration not in spec.durations:
        raise refuse(spec, "duration", f"{duration} s is not offered", list(spec.durations))
    resolution = given.get("resolution")
    if resolution is not None and resolution not in spec.resolutions:
        raise refuse(spec, "resolution", f"{resolution!r} is not offered", list(spec.resolutions))
    aspect = given.get("aspect_ratio")
    if aspect is not None and aspect not in spec.aspect_ratios:
        raise refuse(spec, "aspect_ratio", f"{aspect!r} is not offered", list(spec.aspect_ratios))
    for field in given:
        if field not in _ALWAYS and field not in spec.inputs:
            raise refuse(
                spec, field, "this input is not supported", sorted(_ALWAYS - {"provider_options"} | set(spec.inputs))
            )
    if given.get("generate_audio") and not spec.audio:
        raise refuse(spec, "generate_audio", "audio generation is not offered", [False])
    seed = given.get("seed")
    if seed is not None and spec.seed_range is not None:
        low, high = spec.seed_range
        if not low <= seed <= high:
            raise refuse(spec, "seed", f"{seed} is out of range", {"min": low, "max": high})
    for field, limit_name in _LISTS.items():
        items = given.get(field)
        limit = getattr(spec, limit_name)
        if items is not None and len(items) > limit:
            raise refuse(spec, field, f"{len(items)} items is too many", {"max_items": limit})
    for field in spec.required:
        if given.get(field) is None:
            raise refuse(spec, field, "is required", [field])
    for group in spec.together:
        present = [f for f in group if given.get(f) is not None]
        if present and len(present) != len(group):
            missing = [f for f in group if f not in present]
            raise refuse(spec, missing[0], f"must be given together with {', '.join(present)}", list(group))
    for first, second in spec.exclusive:
        if given.get(first) and given.get(second):
            raise refuse(spec, second, f"cannot be combined with {first}", [first, second])
    for field, needs in spec.requires:
        if given.get(field) and not any(given.get(other) for other in needs):
            raise refuse(spec, field, f"needs {' or '.join(needs)} as well", list(needs))
    for field in spec.urls_only:
        value = given.get(field)
        for url in value if isinstance(value, list) else [value] if value else []:
            if not url.startswith(("https://", "http://")):
                raise refuse(spec, field, "takes public URLs only, not data URIs", ["https://..."])


def check_provider_options(spec: ModelSpec, reserved: Mapping[str, tuple[str, ...]], options: dict[str, Any]) -> None:
    """Refuse a `provider_options` key that Reelay sets itself (it would bypass validation and pricing), one the
    model does not pass through, or a value of the wrong type."""
    # The normalized fields the model takes, and the job's own top-level fields, are Reelay's under any name.
    owned: dict[str, tuple[str, ...]] = {
        name: (f"input.{name}",) for name in (*_ALWAYS - {"provider_options"}, *spec.inputs)
    }
    owned |= {"model": ("model",), "metadata": ("metadata",), **reserved}
    allowed = dict(spec.provider_options)
    for key, value in options.items():
        field = f"input.provider_options.{key}"
        use = owned.get(key)
        if use is not None:
            source = f"from {' or '.join(use)}" if use else "itself"
            raise InvalidRequest(
                f"{field}: Reelay sets {key} {source} for {spec.id}; provider_options may not override it",
                details={"field": field, "model": spec.id, "use": list(use)},
            )
        if key not in allowed:
            raise InvalidRequest(
                f"{field}: not a provider option of {spec.id}; allowed: {', '.join(sorted(allowed)) or 'none'}",
                details={"field": field, "model": spec.id, "allowed": sorted(allowed)},
            )
        if not _JSON_TYPES[allowed[key]](value):
            raise InvalidRequest(
                f"{field}: must be of type {allowed[key]} for {spec.id}",
                details={"field": field, "model": spec.id, "type": allowed[key]},
            )


def check_for(spec: ModelSpec, adapter: ProviderAdapter, given: dict[str, Any]) -> None:
    """The capability data first, then the adapter's own rules for what the data cannot say."""
    check_input(spec, given)
    check_provider_options(spec, adapter.reserved_options(spec), given.get("provider_options") or {})
    try:
        adapter.validate(spec, given)
    except InputRefused as exc:
        if exc.field == "model":  # the model as configured here cannot take jobs at all
            raise InvalidRequest(f"model: {exc.message}", details={"field": "model", "model": spec.id}) from None
        raise refuse(spec, exc.field.removeprefix("input."), exc.message, exc.allowed) from None
