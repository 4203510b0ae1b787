-- hookwarden worker state, version 3: rule breakers. `rule_acts` holds each firing a breaker
-- let act, for its sliding window; `trips` the rules tripped, until an operator resets them.
CREATE TABLE rule_acts (
    rule TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    subject TEXT NOT NULL
);
CREATE INDEX rule_acts_rule ON rule_acts (rule, at_ms);
CREATE TABLE trips (
    rule TEXT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    count BIGINT NOT NULL,
    per_ms BIGINT NOT NULL,
    subjects TEXT NOT NULL
);
