-- Issue 18: the one-time tokens of signed provider webhooks (Mailgun), so a
-- request replayed to any instance is refused. Forgotten after a day (the
-- signatures are only accepted within 5 minutes anyway).
CREATE TABLE webhook_tokens (
    provider  TEXT    NOT NULL,
    token     TEXT    NOT NULL,
    at        INTEGER NOT NULL,
    PRIMARY KEY (provider, token)
);
