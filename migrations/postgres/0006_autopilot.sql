CREATE TABLE selection_origins (
    edition_date TEXT    PRIMARY KEY,
    origin       TEXT    NOT NULL CHECK (origin IN ('file', 'hand', 'fetch')),
    at           BIGINT  NOT NULL
);

CREATE TABLE fetch_status (
    id           BIGINT  PRIMARY KEY CHECK (id = 1),
    edition_date TEXT    NOT NULL,
    at           BIGINT  NOT NULL,
    ok           BOOLEAN NOT NULL,
    message      TEXT    NOT NULL
);
