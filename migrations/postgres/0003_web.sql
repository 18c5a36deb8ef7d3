ALTER TABLE subscribers ADD COLUMN confirm_sent_at BIGINT;
ALTER TABLE subscribers ADD COLUMN confirm_requested_at BIGINT;

ALTER TABLE token_events ADD COLUMN channel TEXT;
ALTER TABLE token_events ADD COLUMN user_agent TEXT;
CREATE INDEX token_events_kind ON token_events (kind, channel);

CREATE INDEX subscribers_pending ON subscribers (created_at) WHERE status = 'pending';
