-- The last event stream position the search indexer has indexed (one row, id 1;
-- src/search/indexer.rs). Until now the index was written in each event's own transaction,
-- so a database with timeline events is indexed up to its newest one: the row starts there.
-- A new database gets no row (and stays empty for `weft db migrate`); the indexer then
-- starts from the beginning of the stream.
CREATE TABLE search_progress (
    id INTEGER PRIMARY KEY NOT NULL,
    stream BIGINT NOT NULL
);
INSERT INTO search_progress (id, stream)
    SELECT 1, MAX(stream_ordering) FROM events WHERE stream_ordering > 0 HAVING COUNT(*) > 0;
