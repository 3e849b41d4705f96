DROP TRIGGER event_search_delete;
DROP TRIGGER event_search_insert;
DROP TABLE event_search_fts;
DROP TABLE event_search;
