DROP TABLE push_outbox;
DROP TABLE pushers;
DROP TABLE push_progress;
DROP TABLE push_notifications;
