ALTER TABLE push_notifications DROP CONSTRAINT push_notifications_pkey;
ALTER TABLE push_notifications ADD PRIMARY KEY (user_id, event_id);
ALTER TABLE event_search DROP CONSTRAINT event_search_pkey;
ALTER TABLE event_search ADD PRIMARY KEY (event_id);
