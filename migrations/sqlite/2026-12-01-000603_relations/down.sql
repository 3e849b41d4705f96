DROP TABLE event_relations;
