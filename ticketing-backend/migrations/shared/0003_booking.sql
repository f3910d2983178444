CREATE TABLE reservations (
    id TEXT PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users(id),
    schedule_id BIGINT NOT NULL REFERENCES schedules(id),
    amount BIGINT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('held', 'paid', 'cancelled', 'expired')),
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX reservations_user ON reservations (user_id, created_at);
CREATE INDEX reservations_schedule ON reservations (schedule_id, status);
CREATE INDEX reservations_expiry ON reservations (status, expires_at);
CREATE TABLE reservation_seats (
    reservation_id TEXT NOT NULL REFERENCES reservations(id),
    schedule_id BIGINT NOT NULL,
    seat_id BIGINT NOT NULL REFERENCES seats(id),
    active INTEGER NOT NULL,
    PRIMARY KEY (reservation_id, seat_id)
);
CREATE UNIQUE INDEX reservation_seats_active ON reservation_seats (schedule_id, seat_id) WHERE active = 1
