-- What the sending process wants an operator to know now (shown by
-- `paperpost status`): at most one row, the latest; cleared when it is over.
CREATE TABLE alerts (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    message  TEXT    NOT NULL,
    at       INTEGER NOT NULL
);

-- Fire times of the schedule that were handled (an edition started, or found
-- nothing to send), so a restart never fires one again: a catch-up fires only
-- a fire time that was missed.
CREATE TABLE fires (
    fire_time   INTEGER PRIMARY KEY,
    handled_at  INTEGER NOT NULL,
    -- schedule or catch-up
    handled_by  TEXT    NOT NULL
);
