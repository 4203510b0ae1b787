-- hookwarden worker state, version 6: the web view's dead-letter page reads the events whose
-- decision is `dead_lettered`, newest first, without walking every other decision.
CREATE INDEX decisions_dead ON decisions (at_ms) WHERE outcome = 'dead_lettered';
