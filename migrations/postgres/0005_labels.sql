-- hookwarden worker state, version 5: analysts' labels of rule matches, for `rules stats`.
CREATE TABLE labels (
    event_key TEXT NOT NULL,
    rule TEXT NOT NULL,
    verdict TEXT NOT NULL,
    note TEXT,
    at_ms BIGINT NOT NULL,
    PRIMARY KEY (event_key, rule)
);
