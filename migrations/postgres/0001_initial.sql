-- hookwarden worker state, version 1: the tables of the embedded store, in PostgreSQL.
-- Keys are the same strings: `provider/subject` for subjects, `provider/event_id` for
-- decisions, an action's Idempotency-Key for done-marks.
CREATE TABLE subjects (
    key TEXT PRIMARY KEY,
    version BIGINT,
    scores TEXT NOT NULL,
    at_ms BIGINT
);
CREATE TABLE fired (
    subject TEXT NOT NULL,
    rule TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    PRIMARY KEY (subject, rule)
);
CREATE TABLE done (
    key TEXT PRIMARY KEY,
    at_ms BIGINT NOT NULL
);
CREATE TABLE decisions (
    event_key TEXT PRIMARY KEY,
    subject_key TEXT,
    outcome TEXT NOT NULL,
    record TEXT NOT NULL,
    at_ms BIGINT NOT NULL
);
CREATE INDEX decisions_subject ON decisions (subject_key, at_ms);
CREATE INDEX decisions_at ON decisions (at_ms);
CREATE INDEX done_at ON done (at_ms);
