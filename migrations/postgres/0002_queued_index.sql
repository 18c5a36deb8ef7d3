DROP INDEX deliveries_due;
CREATE INDEX deliveries_queued ON deliveries (next_attempt_at) WHERE status = 'queued';
