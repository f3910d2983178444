CREATE TABLE payments (
    order_id TEXT PRIMARY KEY,
    reservation_id TEXT NOT NULL REFERENCES reservations(id),
    user_id BIGINT NOT NULL REFERENCES users(id),
    amount BIGINT NOT NULL,
    coupon_id TEXT,
    status TEXT NOT NULL CHECK (status IN ('ready', 'confirming', 'paid', 'failed', 'refunded')),
    step TEXT NOT NULL,
    payment_key TEXT,
    attempts BIGINT NOT NULL,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX payments_reservation ON payments (reservation_id, status);
CREATE INDEX payments_unfinished ON payments (status, updated_at);
CREATE INDEX payments_step ON payments (step);
CREATE TABLE idempotency (
    user_id BIGINT NOT NULL,
    scope TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    status_code BIGINT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, scope, idem_key)
)
