-- Who claimed a row that is being sent: the holder of the sending lock. Claims
-- check the lock and outcomes check this, so a process that lost the lock
-- cannot claim rows or change rows the next holder owns (issue 8, item 5).
ALTER TABLE deliveries ADD COLUMN claimed_by TEXT;
