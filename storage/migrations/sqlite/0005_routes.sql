-- Routes: a job on a route keeps the route id in `model`, the candidate it is on now in `routed_model`, and every
-- candidate it was sent to in `attempts` (a JSON list). A plain job has routed_model = model. Events carry an
-- optional `detail` (a JSON object; job.rerouted's {from, to, reason}, budget.threshold's budget figures).
-- A job's `reservation` is what its key's budget holds for it (JSON; NULL when the key has no budget).

ALTER TABLE jobs ADD COLUMN routed_model TEXT;
ALTER TABLE jobs ADD COLUMN attempts TEXT;
ALTER TABLE jobs ADD COLUMN reservation TEXT;
ALTER TABLE events ADD COLUMN detail BLOB;
