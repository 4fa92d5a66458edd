-- PostgreSQL only: several replicas lease jobs from one database, so each lease records which store
-- instance took it, and a replica that releases its leases (at start-up or shutdown) releases only its own.

ALTER TABLE jobs ADD COLUMN lease_owner text COLLATE "C";
