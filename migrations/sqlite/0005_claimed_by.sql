-- Who claimed a row that is being sent: the claim token of the process that
-- held the sending lock (a random 64-bit number per process, kept small: it
-- is written on every claim). Claims check the lock and outcomes check this,
-- so a process that lost the lock cannot claim rows or change rows the next
-- holder owns (issue 8, item 5).
ALTER TABLE deliveries ADD COLUMN claimed_by INTEGER;
