-- paperpost schema. Times are Unix epoch milliseconds (UTC) unless named *_date
-- (an ISO 8601 calendar date, YYYY-MM-DD).

CREATE TABLE subscribers (
    id                   INTEGER PRIMARY KEY,
    -- Random (v4) identifier that link tokens are derived from, with the server
    -- secret. Not indexed: nothing looks subscribers up by it, and a random-key
    -- index would halve bulk import speed.
    uuid                 TEXT    NOT NULL,
    email                TEXT    NOT NULL UNIQUE COLLATE NOCASE,
    name                 TEXT,
    -- JSON array of topic strings.
    topics               TEXT    NOT NULL DEFAULT '[]',
    timezone             TEXT    NOT NULL DEFAULT 'UTC',
    format               TEXT    NOT NULL DEFAULT 'html' CHECK (format IN ('html', 'text')),
    max_papers           INTEGER NOT NULL DEFAULT 10 CHECK (max_papers BETWEEN 1 AND 50),
    status               TEXT    NOT NULL DEFAULT 'active'
                                 CHECK (status IN ('pending', 'active', 'unsubscribed', 'bounced')),
    -- How the subscriber came: cli, import, file (the subscriber file) or web.
    source               TEXT    NOT NULL CHECK (source IN ('cli', 'import', 'file', 'web')),
    -- Who ended the subscription: link (the subscriber), cli (an operator), sync
    -- (dropped from the subscriber file; a later sync may bring them back).
    unsubscribed_by      TEXT    CHECK (unsubscribed_by IN ('link', 'cli', 'sync', 'bounce')),
    -- SHA-256 (hex) of the unsubscribe token. The token itself is never stored:
    -- it is derived from uuid and the server secret, so a copy of this file
    -- cannot unsubscribe anyone.
    token_hash           TEXT    NOT NULL UNIQUE,
    hard_bounces         INTEGER NOT NULL DEFAULT 0,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL,
    unsubscribed_at      INTEGER
);
CREATE INDEX subscribers_status ON subscribers (status);

CREATE TABLE papers (
    id            TEXT    PRIMARY KEY,
    title         TEXT    NOT NULL CHECK (length(title) > 0),
    abstract      TEXT    NOT NULL,
    -- JSON arrays of strings.
    authors       TEXT    NOT NULL DEFAULT '[]',
    keywords      TEXT    NOT NULL DEFAULT '[]',
    upvotes       INTEGER NOT NULL DEFAULT 0,
    num_comments  INTEGER NOT NULL DEFAULT 0,
    github_repo   TEXT,
    thumbnail     TEXT,
    published_at  INTEGER,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);

-- Each date's selection, in the editor's order.
CREATE TABLE selections (
    edition_date  TEXT    NOT NULL,
    position      INTEGER NOT NULL,
    paper_id      TEXT    NOT NULL REFERENCES papers (id),
    PRIMARY KEY (edition_date, position),
    UNIQUE (edition_date, paper_id)
);

-- An edition starts when its deliveries are enqueued; its audience is then
-- frozen. Whether it has finished is derived from its delivery rows.
CREATE TABLE editions (
    edition_date  TEXT    PRIMARY KEY,
    started_at    INTEGER NOT NULL,
    -- What started it: schedule, catch-up, send (the command).
    started_by    TEXT    NOT NULL
);

-- One row per subscriber and edition: the unit of sending, retrying and auditing.
CREATE TABLE deliveries (
    id              INTEGER PRIMARY KEY,
    edition_date    TEXT    NOT NULL REFERENCES editions (edition_date),
    subscriber_id   INTEGER NOT NULL REFERENCES subscribers (id) ON DELETE CASCADE,
    status          TEXT    NOT NULL DEFAULT 'queued'
                            CHECK (status IN ('queued', 'sending', 'sent', 'failed', 'cancelled')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    lease_until     INTEGER,
    last_error      TEXT,
    -- The server's reply to the accepted message (SMTP) or the file written.
    smtp_reply      TEXT,
    message_id      TEXT,
    first_attempt_at INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    sent_at         INTEGER,
    UNIQUE (subscriber_id, edition_date)
);
CREATE INDEX deliveries_due ON deliveries (status, next_attempt_at);
-- Not (edition_date, status): every status change would then rewrite two index entries.
CREATE INDEX deliveries_edition ON deliveries (edition_date);

-- Uses of links (unsubscribe, preferences), for audit and abuse detection.
CREATE TABLE token_events (
    id             INTEGER PRIMARY KEY,
    subscriber_id  INTEGER REFERENCES subscribers (id) ON DELETE CASCADE,
    kind           TEXT    NOT NULL,
    at             INTEGER NOT NULL,
    detail         TEXT
);
CREATE INDEX token_events_subscriber ON token_events (subscriber_id, at);

-- Who holds the scheduler lock on this database (the delivery engine).
CREATE TABLE scheduler_lock (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    holder      TEXT    NOT NULL,
    expires_at  INTEGER NOT NULL
);
