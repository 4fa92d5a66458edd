"""GET /v1/models shows the capability record that validation enforces: what it lists is what a job is held to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from sandbox import SANDBOXES, SandboxKnobs
from tests.harness import Stack, stack

SLOW = SandboxKnobs(processing_after_s=30, complete_after_s=60)
# A valid value for each input a model may require.
SAMPLES: dict[str, Any] = {
    "prompt": "a drone shot of waves",
    "first_frame": "https://media.example/first.png",
    "last_frame": "https://media.example/last.png",
    "reference_images": ["https://media.example/reference.png"],
    "reference_videos": ["https://media.example/reference.mp4"],
    "reference_audios": ["https://media.example/reference.mp3"],
}


async def _post(s: Stack, model: str, given: dict[str, Any]) -> httpx.Response:
    body = {"model": model, "input": given}
    return await s.client.post(f"{s.url}/v1/jobs", json=body, headers=s.headers)


async def test_every_model_refuses_exactly_the_inputs_it_lists_as_required(tmp_path: Path) -> None:
    async with stack(tmp_path, knobs=SLOW, providers=tuple(SANDBOXES)) as s:
        models = (await s.client.get(f"{s.url}/v1/models", headers=s.headers)).json()["data"]
        assert len(models) == 8
        for model in models:
            assert model["available"], model["id"]
            required = model["capabilities"]["inputs_required"]
            assert "prompt" in required, model["id"]
            minimal = {field: SAMPLES[field] for field in required}
            # Only the listed inputs: every input not listed is indeed optional.
            accepted = await _post(s, model["id"], minimal)
            assert accepted.status_code == 202, (model["id"], accepted.text)
            for field in required:
                refused = await _post(s, model["id"], {k: v for k, v in minimal.items() if k != field})
                assert refused.status_code == 400, (model["id"], field, refused.text)
                assert field in refused.json()["error"]["message"], (model["id"], field)


async def test_every_model_takes_a_prompt_of_its_listed_length_and_refuses_a_longer_one(tmp_path: Path) -> None:
    async with stack(tmp_path, knobs=SLOW, providers=tuple(SANDBOXES)) as s:
        models = (await s.client.get(f"{s.url}/v1/models", headers=s.headers)).json()["data"]
        for model in models:
            limit = model["capabilities"]["max_prompt_chars"]
            given = {field: SAMPLES[field] for field in model["capabilities"]["inputs_required"]}
            accepted = await _post(s, model["id"], {**given, "prompt": "p" * limit})
            assert accepted.status_code == 202, (model["id"], accepted.text)
            refused = await _post(s, model["id"], {**given, "prompt": "p" * (limit + 1)})
            assert refused.status_code == 400, (model["id"], refused.text)
            assert refused.json()["error"]["message"].startswith("input.prompt"), model["id"]
