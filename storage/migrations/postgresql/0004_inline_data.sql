-- Inline data (the meaning of sqlite/0003_inline_data.sql): a job's data URIs are stored once, here, by the
-- placeholder its input names them with. Job reads, lists and event snapshots never read this table; deleting
-- a job deletes its row. Jobs stored before this migration keep their data URIs in `jobs.input`.

CREATE TABLE job_inline (
    job_id    text COLLATE "C" PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    data_uris json NOT NULL
);
