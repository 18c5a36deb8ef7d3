-- As in SQLite (`paperpost db copy-to` marks the database it copied from).
CREATE TABLE moved (
    id   BIGINT  PRIMARY KEY CHECK (id = 1),
    url  TEXT    NOT NULL,
    at   BIGINT  NOT NULL
);
