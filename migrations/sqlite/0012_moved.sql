-- Set by `paperpost db copy-to` on the database it copied from: where the
-- installation went. A sender refuses to start on a database that moved.
CREATE TABLE moved (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    url  TEXT    NOT NULL,
    at   INTEGER NOT NULL
);
