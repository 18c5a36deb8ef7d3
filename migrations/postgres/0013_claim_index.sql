-- The claim takes the next due rows of one edition in next_attempt_at order.
-- With only deliveries_queued, PostgreSQL intersected it with
-- deliveries_edition and sorted every queued row of the edition for each
-- claim of a few dozen (5 ms at 10,000 queued, growing with the list); this
-- index gives them in order and stops at the LIMIT.
CREATE INDEX deliveries_queued_edition ON deliveries (edition_date, next_attempt_at)
    WHERE status = 'queued';
