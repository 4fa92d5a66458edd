"""/metrics over real HTTP: its Content-Type, and the job outcome and upstream create figures."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.harness import Stack


async def test_metrics_has_one_charset_and_counts_outcomes_and_create_latency(seedance: Stack) -> None:
    job = await seedance.submit()
    await seedance.wait_for(job["id"], {"succeeded"})
    response = await seedance.client.get(f"{seedance.url}/metrics")
    content_type = response.headers["content-type"]
    assert content_type.startswith("text/plain; version=")
    assert content_type.count("charset") == 1
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    finished = ("reelay_jobs_finished_total", (("model", "seedancee2/pro"), ("status", "succeeded")))
    assert samples[finished] == 1
    creates = ("reelay_upstream_create_seconds_count", (("outcome", "accepted"), ("provider", "seedancee2")))
    assert samples[creates] == 1
    assert samples[("reelay_upstream_create_seconds_sum", creates[1])] > 0
