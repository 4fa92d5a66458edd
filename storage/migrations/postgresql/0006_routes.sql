-- Routes (the meaning of sqlite/0005_routes.sql): the candidate a job is on now, the candidates it was sent to,
-- its budget reservation, and an event's optional detail object.

ALTER TABLE jobs ADD COLUMN routed_model text;
ALTER TABLE jobs ADD COLUMN attempts json;
ALTER TABLE jobs ADD COLUMN reservation json;
ALTER TABLE events ADD COLUMN detail bytea;
