DROP TABLE user_directory;
