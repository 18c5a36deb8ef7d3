CREATE TABLE webhook_tokens (
    provider  TEXT    NOT NULL,
    token     TEXT    NOT NULL,
    at        BIGINT  NOT NULL,
    PRIMARY KEY (provider, token)
);
