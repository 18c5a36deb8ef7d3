-- What the sending process wants an operator to know now (shown by
-- `paperpost status`): at most one row, the latest; cleared when it is over.
CREATE TABLE alerts (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    message  TEXT    NOT NULL,
    at       INTEGER NOT NULL
);
