-- The fingerprint of the link secret this database's tokens were made with
-- (an HMAC under the secret, never the secret): a process with another
-- secret (a lost secret file replaced by a new one) refuses to run instead of
-- mailing links that answer 404.
CREATE TABLE secret_fingerprint (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    fingerprint TEXT    NOT NULL,
    at          INTEGER NOT NULL
);
