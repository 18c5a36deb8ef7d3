CREATE TABLE alerts (
    id       BIGINT  PRIMARY KEY CHECK (id = 1),
    message  TEXT    NOT NULL,
    at       BIGINT  NOT NULL
);

CREATE TABLE fires (
    fire_time   BIGINT  PRIMARY KEY,
    handled_at  BIGINT  NOT NULL,
    handled_by  TEXT    NOT NULL
);
