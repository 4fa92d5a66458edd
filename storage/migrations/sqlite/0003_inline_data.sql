-- Inline data: a job's data URIs are stored once, here, by the placeholder its input names them with (a JSON
-- object). Job reads, lists and event snapshots never read this table; deleting a job deletes its row.
-- Jobs stored before this migration keep their data URIs in `jobs.input` and have no row here.

CREATE TABLE job_inline (
    job_id    TEXT PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    data_uris TEXT NOT NULL
);
