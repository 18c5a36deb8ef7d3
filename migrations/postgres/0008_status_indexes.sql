CREATE INDEX deliveries_errors ON deliveries (updated_at) WHERE last_error IS NOT NULL;
