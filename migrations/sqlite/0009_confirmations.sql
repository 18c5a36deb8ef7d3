-- Issue 16: confirmations of web sign-ups are random single-use values of
-- their own (the link token confirmed a sign-up anyone made), and the alerts
-- `paperpost status` shows are kept per kind.

-- One row per confirmation mail queued: the SHA-256 of the random value in its
-- link, whose sign-up it confirms, and the normalized mailbox it went to (one
-- mail per mailbox per hour; every mail in the last hour counts toward
-- subscribers.confirmations_per_hour). A mail that could not be sent has its
-- row deleted, so nobody is locked out by our fault.
CREATE TABLE confirmations (
    token_hash     TEXT    PRIMARY KEY,
    subscriber_id  INTEGER NOT NULL REFERENCES subscribers (id) ON DELETE CASCADE,
    mailbox        TEXT    NOT NULL,
    created_at     INTEGER NOT NULL,
    -- Set by the click that used it: it works once.
    used_at        INTEGER
);
CREATE INDEX confirmations_mailbox ON confirmations (mailbox, created_at);
CREATE INDEX confirmations_created ON confirmations (created_at);
CREATE INDEX confirmations_subscriber ON confirmations (subscriber_id);

-- Superseded by the confirmations table.
ALTER TABLE subscribers DROP COLUMN confirm_sent_at;
ALTER TABLE subscribers DROP COLUMN confirm_requested_at;

-- One alert per kind: 'delivery' (the engine's guard, replaced as it
-- changes) and 'signups' (the hourly limit on confirmation mails).
CREATE TABLE alerts_by_kind (
    kind     TEXT    PRIMARY KEY,
    message  TEXT    NOT NULL,
    at       INTEGER NOT NULL
);
INSERT INTO alerts_by_kind (kind, message, at) SELECT 'delivery', message, at FROM alerts;
DROP TABLE alerts;
ALTER TABLE alerts_by_kind RENAME TO alerts;
