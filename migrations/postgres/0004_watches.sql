-- hookwarden worker state, version 4: silence watches. Per watch (`watch/NAME`) and per
-- provider (`provider/NAME`), when an event was last decided, and since when a watch is silent.
CREATE TABLE last_seen (
    key TEXT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    silent_since_ms BIGINT
);
