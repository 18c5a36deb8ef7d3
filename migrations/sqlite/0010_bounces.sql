-- Issue 18: reports of what happened after the mail server accepted a
-- message: delivery status notifications (bounces, RFC 3464) and feedback
-- reports (complaints, RFC 5965), one row per report, recorded once.

CREATE TABLE bounces (
    id             INTEGER PRIMARY KEY,
    -- The subscriber and delivery the report was matched to; NULL: unmatched.
    subscriber_id  INTEGER REFERENCES subscribers (id) ON DELETE CASCADE,
    delivery_id    INTEGER REFERENCES deliveries (id) ON DELETE SET NULL,
    edition_date   TEXT,
    -- hard (no such mailbox), soft (full, 4.x.x), block (policy: never the
    -- subscriber's fault), complaint, delayed, unknown.
    kind           TEXT    NOT NULL
                           CHECK (kind IN ('hard', 'soft', 'block', 'complaint', 'delayed', 'unknown')),
    -- Where it came from (mail), and how it was matched (verp, link-token, none).
    source         TEXT    NOT NULL,
    matched_by     TEXT    NOT NULL,
    status         TEXT,
    diagnostic     TEXT,
    recipient      TEXT,
    -- The recipient's domain and the diagnostic without addresses and
    -- numbers, for the guard.
    domain         TEXT,
    diagnostic_key TEXT,
    -- The original message's Message-ID: recorded, never used to suppress
    -- (anyone can quote it).
    message_id     TEXT,
    -- The report's own identity (its Message-ID, or a hash of it): a report
    -- delivered twice is recorded once.
    event_key      TEXT    NOT NULL,
    occurred_at    INTEGER NOT NULL,
    -- 1 while it counts against the subscriber; 0 once the guard or
    -- `unbounce` took it back.
    counted        INTEGER NOT NULL DEFAULT 1,
    UNIQUE (source, event_key)
);
CREATE INDEX bounces_subscriber ON bounces (subscriber_id, occurred_at);
CREATE INDEX bounces_recent ON bounces (occurred_at);
