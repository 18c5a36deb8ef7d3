ALTER TABLE deliveries ADD COLUMN claimed_by BIGINT;
