-- Secrets the service makes for itself (the signer of asset URLs, of stream tokens), made once by whichever
-- process asks first, so every replica on the database signs and checks with the same one.
CREATE TABLE server_secrets (
    name text PRIMARY KEY,
    value text NOT NULL
);
