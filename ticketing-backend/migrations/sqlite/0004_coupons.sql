CREATE TABLE coupon_campaigns (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    discount_kind TEXT NOT NULL CHECK (discount_kind IN ('amount', 'percent')),
    discount BIGINT NOT NULL,
    stock BIGINT NOT NULL,
    valid_from BIGINT NOT NULL,
    valid_until BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE coupons (
    id TEXT PRIMARY KEY,
    campaign_id BIGINT NOT NULL REFERENCES coupon_campaigns(id),
    user_id BIGINT NOT NULL REFERENCES users(id),
    status TEXT NOT NULL CHECK (status IN ('issued', 'used', 'expired')),
    order_id TEXT,
    issued_at BIGINT NOT NULL,
    used_at BIGINT,
    UNIQUE (campaign_id, user_id)
);
CREATE INDEX coupons_user ON coupons (user_id, issued_at)
