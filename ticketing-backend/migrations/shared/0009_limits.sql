-- Limits a ticketing operator expects: seats per buyer per round and per admission (a
-- concert's own cap, else the backend's default), reservations remembering the admission
-- they were made under, coupon campaigns scoped to a concert or a round, and the rows
-- that serialise one buyer's (or one admission's) holds while they are counted.
ALTER TABLE concerts ADD COLUMN max_seats_per_buyer BIGINT;
ALTER TABLE reservations ADD COLUMN admission_jti TEXT;
CREATE INDEX reservations_admission ON reservations (admission_jti);
ALTER TABLE coupon_campaigns ADD COLUMN concert_id BIGINT REFERENCES concerts(id);
ALTER TABLE coupon_campaigns ADD COLUMN schedule_id BIGINT REFERENCES schedules(id);
CREATE TABLE limit_locks (
    key TEXT PRIMARY KEY,
    touched_at BIGINT NOT NULL
);
CREATE INDEX limit_locks_touched ON limit_locks (touched_at);
-- A queued concert's coupon: one per admission too, whichever accounts share it.
ALTER TABLE coupons ADD COLUMN admission_jti TEXT;
CREATE UNIQUE INDEX coupons_one_per_admission ON coupons (campaign_id, admission_jti) WHERE admission_jti IS NOT NULL;
-- The hold-expiry job finds recently cancelled reservations to tidy the hold map after.
CREATE INDEX reservations_recent ON reservations (status, updated_at);
-- Idempotency keys are kept a day; the hold-expiry job forgets older ones.
CREATE INDEX idempotency_created ON idempotency (created_at)
