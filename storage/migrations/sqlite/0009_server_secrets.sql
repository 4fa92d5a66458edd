-- Secrets the service makes for itself (the signer of asset URLs, of stream tokens), made once by whichever
-- process asks first, so every replica on the database signs and checks with the same one.
CREATE TABLE server_secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
