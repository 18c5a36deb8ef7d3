CREATE TABLE secret_fingerprint (
    id          BIGINT  PRIMARY KEY CHECK (id = 1),
    fingerprint TEXT    NOT NULL,
    at          BIGINT  NOT NULL
);
