-- The user directory's profiles of users seen joining rooms (remote users' names come only
-- from their member events; local users' from `users`, which wins when both exist). The
-- newest join event (by stream position) gives the name. Who may be found is decided at
-- search time from `memberships` (rooms shared with the searcher, and published rooms).
CREATE TABLE user_directory (
    user_id TEXT PRIMARY KEY NOT NULL,
    display_name TEXT,
    avatar_url TEXT,
    stream_ordering BIGINT NOT NULL
);

INSERT INTO user_directory (user_id, display_name, avatar_url, stream_ordering)
SELECT DISTINCT ON (m.user_id) m.user_id,
       CASE WHEN jsonb_typeof(e.json::jsonb #> '{content,displayname}') = 'string'
            THEN e.json::jsonb #>> '{content,displayname}' END,
       CASE WHEN jsonb_typeof(e.json::jsonb #> '{content,avatar_url}') = 'string'
            THEN e.json::jsonb #>> '{content,avatar_url}' END,
       e.stream_ordering
FROM memberships m JOIN events e ON e.event_id = m.event_id
WHERE m.membership = 'join' AND e.stream_ordering IS NOT NULL
ORDER BY m.user_id, e.stream_ordering DESC;
