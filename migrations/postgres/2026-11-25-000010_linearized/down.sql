DROP TABLE lm_lpdus;
