-- The web endpoint: double opt-in and the record of link uses.

-- When the last confirmation mail went to this address (at most one an hour).
ALTER TABLE subscribers ADD COLUMN confirm_sent_at INTEGER;
-- When someone who had unsubscribed (or bounced) asked through the subscribe
-- form to come back; their confirmation click within subscribers.pending_ttl
-- reactivates them. Pending subscribers use created_at instead.
ALTER TABLE subscribers ADD COLUMN confirm_requested_at INTEGER;

-- token_events.kind: unsubscribe, resubscribe, preferences, confirm, rotate.
-- How the link was used: one-click (RFC 8058 POST from a mail client), page (a
-- person on our page), cli (an operator).
ALTER TABLE token_events ADD COLUMN channel TEXT;
ALTER TABLE token_events ADD COLUMN user_agent TEXT;
CREATE INDEX token_events_kind ON token_events (kind, channel);

CREATE INDEX subscribers_pending ON subscribers (created_at) WHERE status = 'pending';
