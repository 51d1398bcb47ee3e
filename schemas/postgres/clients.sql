-- lakeshop schema version 1: clients (PostgreSQL). Additive changes only.
-- updated_at is kept by a trigger on every change; deletion is a soft delete (deleted_at) so
-- incremental extracts see it. Re-runnable.
CREATE TABLE IF NOT EXISTS clients (
    client_id         UUID PRIMARY KEY,
    first_name        VARCHAR(100) NOT NULL,
    last_name         VARCHAR(100) NOT NULL,
    email             VARCHAR(150) NOT NULL,
    address           VARCHAR(250) NOT NULL,
    registration_date TIMESTAMPTZ  NOT NULL,
    updated_at        TIMESTAMPTZ  NOT NULL DEFAULT now(),
    deleted_at        TIMESTAMPTZ
);

CREATE INDEX IF NOT EXISTS clients_updated_at_idx ON clients (updated_at, client_id);

CREATE OR REPLACE FUNCTION lakeshop_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- clock_timestamp(), not now(): rows changed later in one long transaction still
    -- order after the ones changed before them.
    NEW.updated_at := clock_timestamp();
    RETURN NEW;
END;
$$;

DROP TRIGGER IF EXISTS clients_touch_updated_at ON clients;
CREATE TRIGGER clients_touch_updated_at
    BEFORE UPDATE ON clients
    FOR EACH ROW
    WHEN (OLD.* IS DISTINCT FROM NEW.*)
    EXECUTE FUNCTION lakeshop_touch_updated_at();

COMMENT ON TABLE clients IS 'lakeshop schema version 1';
