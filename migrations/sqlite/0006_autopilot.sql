-- Who made each date's selection: a file import, the editor by hand, or a
-- fetch by the daemon. A fetch replaces only a selection a fetch made; dates
-- selected before this migration count as the editor's.
CREATE TABLE selection_origins (
    edition_date TEXT    PRIMARY KEY,
    origin       TEXT    NOT NULL CHECK (origin IN ('file', 'hand', 'fetch')),
    at           INTEGER NOT NULL
);

-- The last fetch of a day's papers, for `paperpost status`.
CREATE TABLE fetch_status (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    edition_date TEXT    NOT NULL,
    at           INTEGER NOT NULL,
    ok           INTEGER NOT NULL,
    message      TEXT    NOT NULL
);
