-- Only queued rows need finding by due time. Indexing every row by
-- (status, next_attempt_at) moved an index entry on every status change, so
-- recording a sent message wrote an index page besides the row's own page;
-- a partial index is touched only when a row enters or leaves the queue.
DROP INDEX deliveries_due;
CREATE INDEX deliveries_queued ON deliveries (next_attempt_at) WHERE status = 'queued';
