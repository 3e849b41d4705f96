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
SELECT e.state_key,
       CASE json_type(e.json, '$.content.displayname') WHEN 'text' THEN json_extract(e.json, '$.content.displayname') END,
       CASE json_type(e.json, '$.content.avatar_url') WHEN 'text' THEN json_extract(e.json, '$.content.avatar_url') END,
       e.stream_ordering
FROM memberships m JOIN events e ON e.event_id = m.event_id
WHERE m.membership = 'join' AND e.stream_ordering IS NOT NULL
  AND e.stream_ordering = (SELECT MAX(e2.stream_ordering) FROM memberships m2
                           JOIN events e2 ON e2.event_id = m2.event_id
                           WHERE m2.user_id = m.user_id AND m2.membership = 'join')
GROUP BY e.state_key;
