DROP TABLE lm_join_staging;
