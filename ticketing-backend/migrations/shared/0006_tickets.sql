CREATE TABLE tickets (
    id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL REFERENCES payments(order_id),
    reservation_id TEXT NOT NULL REFERENCES reservations(id),
    seat_id BIGINT NOT NULL REFERENCES seats(id),
    user_id BIGINT NOT NULL REFERENCES users(id),
    issued_at BIGINT NOT NULL,
    UNIQUE (reservation_id, seat_id)
);
CREATE INDEX tickets_user ON tickets (user_id, issued_at);
CREATE INDEX tickets_order ON tickets (order_id)
