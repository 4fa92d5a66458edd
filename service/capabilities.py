"""Checks a job's input against its model's capabilities before anything goes upstream."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from service.egress import TargetRefused, check_target
from service.errors import InputRefused, InvalidRequest
from service.providers.base import ModelSpec, ProviderAdapter
from service.wire import JobInput

_EVERY_MODEL = ("prompt", "duration", "resolution", "aspect_ratio")
_ALWAYS = frozenset({*_EVERY_MODEL, "provider_options"})
# What the request schema requires of every job (JobInput's fields without a default): required for each model.
_SCHEMA_REQUIRED = tuple(f.encode_name for f in msgspec.structs.fields(JobInput) if f.required)
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


def accepted_inputs(spec: ModelSpec) -> tuple[str, ...]:
    """Every input field the model takes."""
    return (*_EVERY_MODEL, *spec.inputs, "provider_options")


def required_inputs(spec: ModelSpec) -> tuple[str, ...]:
    """The input fields a job for the model must give."""
    return (*_SCHEMA_REQUIRED, *(f for f in spec.required if f not in _SCHEMA_REQUIRED))


def capability_record(spec: ModelSpec) -> dict[str, Any]:
    """The model's capabilities as GET /v1/models shows them: the data check_input enforces, read the same way."""
    return {
        "durations": list(spec.durations),
        "default_duration": spec.default_duration,
        "resolutions": list(spec.resolutions),
        "default_resolution": spec.default_resolution,
        "aspect_ratios": list(spec.aspect_ratios),
        "default_aspect_ratio": spec.default_aspect_ratio,
        "inputs": list(accepted_inputs(spec)),
        "max_prompt_chars": spec.max_prompt_chars,
        "max_reference_images": spec.max_reference_images,
        "max_reference_videos": spec.max_reference_videos,
        "max_reference_audios": spec.max_reference_audios,
        "audio": spec.audio,
        "seed_range": None if spec.seed_range is None else {"min": spec.seed_range[0], "max": spec.seed_range[1]},
        "callbacks": spec.callbacks,
        "inputs_required": list(required_inputs(spec)),
        "inputs_together": [list(g) for g in spec.together],
        "inputs_exclusive": [list(p) for p in spec.exclusive],
        "inputs_requiring": {field: list(needs) for field, needs in spec.requires},
        "inputs_urls_only": list(spec.urls_only),
        "provider_options": dict(spec.provider_options),
    }


URL_FIELDS = ("first_frame", "last_frame", "reference_images", "reference_videos", "reference_audios")
URL_FORMS = ["https://...", "http://...", "data:..."]


def check_urls(given: dict[str, Any]) -> None:
    """Raise InvalidRequest unless every URL input is an http(s) URL to a routable host, or a data URI.

    Providers fetch these: a file://, gopher:// or link-local URL asks them to read their own machine or cloud
    metadata, never a caller's media.
    """
    for field in URL_FIELDS:
        value = given.get(field)
        for url in value if isinstance(value, list) else [value] if value else []:
            problem = url_problem(url)
            if problem is not None:
                raise InvalidRequest(
                    f"input.{field}: {problem}; only https:// or http:// URLs and data: URIs are accepted",
                    details={"field": f"input.{field}", "allowed": URL_FORMS},
                )


def url_problem(url: str) -> str | None:
    """Why `url` is not accepted as a media input, or None."""
    if url[:5].lower() == "data:":
        return None
    try:
        check_target(url)
    except TargetRefused as exc:
        if exc.reason != "private":  # the provider fetches it, not Reelay: a private host is on its network
            return exc.message
    return None


def check_input(spec: ModelSpec, given: dict[str, Any]) -> None:
    """Raise InvalidRequest naming the first field the model cannot serve and its allowed values."""
    check_urls(given)
    prompt = given.get("prompt")
    if prompt is not None and len(prompt) > spec.max_prompt_chars:
        limit = spec.max_prompt_chars
        raise refuse(spec, "prompt", f"at most {limit} characters", {"max_length": limit})
    duration = given.get("duration")
    if duration is not None and duration not in spec.durations:
        raise refuse(spec, "duration", f"{duration} s is not offered", list(spec.durations))
    resolution = given.get("resolution")
    if resolution is not None and resolution not in spec.resolutions:
        raise refuse(spec, "resolution", f"{resolution!r} is not offered", list(spec.resolutions))
    aspect = given.get("aspect_ratio")
    if aspect is not None and aspect not in spec.aspect_ratios:
        raise refuse(spec, "aspect_ratio", f"{aspect!r} is not offered", list(spec.aspect_ratios))
    accepted = accepted_inputs(spec)
    for field in given:
        if field not in accepted:
            raise refuse(spec, field, "this input is not supported", sorted(set(accepted) - {"provider_options"}))
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
    for field in required_inputs(spec):
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
