-- hookwarden worker state, version 2: the event archive `hookwarden rules backtest` replays.
-- `seq` is delivery order: batches insert their events in the order they were delivered,
-- and a subject's batches commit one after another under its lock.
CREATE TABLE archive (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_key TEXT NOT NULL UNIQUE,
    provider TEXT NOT NULL,
    type TEXT NOT NULL,
    event_id TEXT NOT NULL,
    subject_key TEXT,
    version BIGINT,
    received_ms BIGINT NOT NULL,
    body TEXT NOT NULL
);
