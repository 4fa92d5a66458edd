-- Metadata filters of GET /v1/jobs: one row per metadata pair of a job, keyed so that a filter reads the matching
-- jobs newest first from the index instead of testing every job of the key (bench phase k: at 1 M jobs a
-- filter matching 0.1 % of them tested ~20,000 rows per page; a GIN index on jobs.metadata finds the matches
-- but not in order, so a page still fetched and sorted all of them). The same table as SQLite's 0012.
-- A job's metadata never changes after its insert; deleting the job deletes its rows.

CREATE TABLE job_metadata (
    api_key_id text COLLATE "C" NOT NULL,
    key        text COLLATE "C" NOT NULL,
    value      text COLLATE "C" NOT NULL,
    job_id     text COLLATE "C" NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    PRIMARY KEY (api_key_id, key, value, job_id)
);

CREATE INDEX job_metadata_by_job ON job_metadata (job_id);

INSERT INTO job_metadata (api_key_id, key, value, job_id)
    SELECT jobs.api_key_id, pair.key, pair.value, jobs.id FROM jobs, jsonb_each_text(jobs.metadata) AS pair;

-- A status filter (alone or with model or provider) reads the key's jobs of that status newest first, instead of
-- testing every job of the key: `status=cancelled&model=…` matched 0.75 % of them.
CREATE INDEX jobs_by_key_status ON jobs (api_key_id, status, id DESC);
