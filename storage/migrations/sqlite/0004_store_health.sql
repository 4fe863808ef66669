-- One row the writer rewrites while commits fail, to see when the store has healed (e.g. disk space
-- freed): it holds a time and nothing else.
CREATE TABLE store_health (id INTEGER PRIMARY KEY CHECK (id = 1), checked_ms INTEGER NOT NULL);
