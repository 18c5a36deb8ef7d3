CREATE TABLE confirmations (
    token_hash     TEXT    PRIMARY KEY,
    subscriber_id  BIGINT  NOT NULL REFERENCES subscribers (id) ON DELETE CASCADE,
    mailbox        TEXT    NOT NULL,
    created_at     BIGINT  NOT NULL,
    used_at        BIGINT
);
CREATE INDEX confirmations_mailbox ON confirmations (mailbox, created_at);
CREATE INDEX confirmations_created ON confirmations (created_at);
CREATE INDEX confirmations_subscriber ON confirmations (subscriber_id);

ALTER TABLE subscribers DROP COLUMN confirm_sent_at;
ALTER TABLE subscribers DROP COLUMN confirm_requested_at;

DROP TABLE alerts;
CREATE TABLE alerts (
    kind     TEXT    PRIMARY KEY,
    message  TEXT    NOT NULL,
    at       BIGINT  NOT NULL
);
