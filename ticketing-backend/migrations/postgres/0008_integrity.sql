-- Payment integrity kept by the database, not only by the code: one live order (being
-- confirmed, paid, or being compensated or refunded) per reservation; one provider attempt
-- number per order of a reservation; tickets with a status and one valid ticket per seat;
-- and triggers that refuse any write breaking the money's invariants. (The same rules as the
-- SQLite file; PostgreSQL's trigger conditions cannot hold subqueries, so they live in
-- functions. Trigger functions are volatile: each check reads what is committed when it runs.)
ALTER TABLE payments ADD COLUMN attempt BIGINT;
CREATE UNIQUE INDEX payments_attempt ON payments (reservation_id, attempt);
CREATE UNIQUE INDEX payments_one_live ON payments (reservation_id)
    WHERE status IN ('confirming', 'paid') OR step = 'compensating';
ALTER TABLE tickets ADD COLUMN status TEXT NOT NULL DEFAULT 'valid' CHECK (status IN ('valid', 'revoked'));
ALTER TABLE tickets ADD COLUMN revoked_at BIGINT;
CREATE UNIQUE INDEX tickets_live_seat ON tickets (seat_id) WHERE status = 'valid';
CREATE FUNCTION integrity_sold_seat_stays() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.active = 1 AND NEW.active = 0
        AND (SELECT status FROM reservations WHERE id = OLD.reservation_id) = 'paid' THEN
        RAISE EXCEPTION 'integrity: a sold seat returns to sale only with its refund';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER integrity_sold_seat_stays BEFORE UPDATE OF active ON reservation_seats
    FOR EACH ROW EXECUTE FUNCTION integrity_sold_seat_stays();
CREATE FUNCTION integrity_reservation_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'paid' AND OLD.status <> 'paid' AND (OLD.status <> 'held'
        OR NOT EXISTS (SELECT 1 FROM payments WHERE reservation_id = OLD.id AND status = 'confirming')) THEN
        RAISE EXCEPTION 'integrity: only a held reservation with an order being confirmed is paid';
    END IF;
    IF OLD.status = 'paid' AND NEW.status <> 'paid'
        AND EXISTS (SELECT 1 FROM payments WHERE reservation_id = OLD.id AND status = 'paid') THEN
        RAISE EXCEPTION 'integrity: a paid reservation is undone only by refunding its order';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER integrity_reservation_status BEFORE UPDATE OF status ON reservations
    FOR EACH ROW EXECUTE FUNCTION integrity_reservation_status();
CREATE FUNCTION integrity_order_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'paid' AND OLD.status <> 'paid' AND (OLD.status <> 'confirming'
        OR (SELECT status FROM reservations WHERE id = NEW.reservation_id) <> 'paid') THEN
        RAISE EXCEPTION 'integrity: an order is paid only while confirming, with its reservation';
    END IF;
    IF OLD.status = 'paid' AND NEW.status <> 'paid' AND (NEW.status <> 'refunded'
        OR EXISTS (SELECT 1 FROM tickets WHERE order_id = OLD.order_id AND status = 'valid')) THEN
        RAISE EXCEPTION 'integrity: a paid order only becomes refunded, after its tickets are revoked';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER integrity_order_status BEFORE UPDATE OF status ON payments
    FOR EACH ROW EXECUTE FUNCTION integrity_order_status();
CREATE FUNCTION integrity_ticket_paid() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'valid' AND NOT EXISTS (SELECT 1 FROM payments p JOIN reservations r ON r.id = p.reservation_id
        WHERE p.order_id = NEW.order_id AND p.status = 'paid' AND r.id = NEW.reservation_id AND r.status = 'paid') THEN
        RAISE EXCEPTION 'integrity: a ticket is issued only for a paid order of a paid reservation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER integrity_ticket_paid BEFORE INSERT ON tickets
    FOR EACH ROW EXECUTE FUNCTION integrity_ticket_paid();
CREATE FUNCTION integrity_ticket_stays_revoked() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status = 'revoked' AND NEW.status <> 'revoked' THEN
        RAISE EXCEPTION 'integrity: a revoked ticket stays revoked';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER integrity_ticket_stays_revoked BEFORE UPDATE OF status ON tickets
    FOR EACH ROW EXECUTE FUNCTION integrity_ticket_stays_revoked()
