-- The followers' rows keyed by stream position instead of event ID (storage/search.rs,
-- storage/push.rs): positions grow, so a batch of rows lands at the end of each B-tree,
-- where random event IDs touched a page per row.
ALTER TABLE event_search DROP CONSTRAINT event_search_pkey;
ALTER TABLE event_search ADD PRIMARY KEY (stream_ordering);
ALTER TABLE push_notifications DROP CONSTRAINT push_notifications_pkey;
ALTER TABLE push_notifications ADD PRIMARY KEY (user_id, stream_ordering);
