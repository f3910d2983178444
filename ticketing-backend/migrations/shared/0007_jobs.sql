ALTER TABLE payments ADD COLUMN paid_at BIGINT;
CREATE INDEX payments_paid_at ON payments (paid_at, order_id);
CREATE TABLE job_leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until_ms BIGINT NOT NULL
);
CREATE TABLE settlement_runs (
    day BIGINT PRIMARY KEY,
    payments BIGINT NOT NULL,
    settled_by TEXT NOT NULL,
    completed_at BIGINT NOT NULL
);
CREATE TABLE settlements (
    host TEXT NOT NULL,
    day BIGINT NOT NULL,
    payments BIGINT NOT NULL,
    gross BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (host, day)
)
