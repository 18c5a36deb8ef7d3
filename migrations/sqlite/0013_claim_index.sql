-- PostgreSQL's 0013 adds an index for its claim. SQLite's claim names its
-- index (INDEXED BY deliveries_queued) and needs none: this version keeps
-- the two stores' schema versions in step.
SELECT 1;
