CREATE TABLE venues (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    address TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE performers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE concerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    title TEXT NOT NULL,
    artists TEXT NOT NULL,
    category TEXT NOT NULL,
    description TEXT NOT NULL,
    starts_on BIGINT NOT NULL,
    ends_on BIGINT NOT NULL,
    venue_id BIGINT NOT NULL REFERENCES venues(id),
    host TEXT NOT NULL,
    room TEXT,
    poster TEXT,
    deleted_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX concerts_live ON concerts (deleted_at, starts_on, id);
CREATE TABLE concert_performers (
    concert_id BIGINT NOT NULL REFERENCES concerts(id),
    performer_id BIGINT NOT NULL REFERENCES performers(id),
    PRIMARY KEY (concert_id, performer_id)
);
CREATE TABLE schedules (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    concert_id BIGINT NOT NULL REFERENCES concerts(id),
    starts_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX schedules_concert ON schedules (concert_id, starts_at);
CREATE TABLE seats (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    schedule_id BIGINT NOT NULL REFERENCES schedules(id),
    section TEXT NOT NULL,
    row_label TEXT NOT NULL,
    number BIGINT NOT NULL,
    grade TEXT NOT NULL,
    price BIGINT NOT NULL,
    UNIQUE (schedule_id, section, row_label, number)
);
CREATE INDEX seats_schedule ON seats (schedule_id, id);
