-- `paperpost status` lists the latest errors: only rows with an error are
-- indexed (a message sent at the first attempt never enters this index),
-- so the newest ten are found without reading every delivery.
CREATE INDEX deliveries_errors ON deliveries (updated_at) WHERE last_error IS NOT NULL;
