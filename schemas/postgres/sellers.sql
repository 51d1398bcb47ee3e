-- lakeshop schema version 1: sellers, i.e. shops (PostgreSQL). Additive changes only.
-- updated_at is kept by a trigger on every change; deletion is a soft delete (deleted_at).
-- Re-runnable.
CREATE TABLE IF NOT EXISTS sellers (
    seller_id  UUID PRIMARY KEY,
    name       VARCHAR(200) NOT NULL,
    region     VARCHAR(100) NOT NULL,
    created_at TIMESTAMPTZ  NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ  NOT NULL DEFAULT now(),
    deleted_at TIMESTAMPTZ
);

CREATE INDEX IF NOT EXISTS sellers_updated_at_idx ON sellers (updated_at, seller_id);

CREATE OR REPLACE FUNCTION lakeshop_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := clock_timestamp();
    RETURN NEW;
END;
$$;

DROP TRIGGER IF EXISTS sellers_touch_updated_at ON sellers;
CREATE TRIGGER sellers_touch_updated_at
    BEFORE UPDATE ON sellers
    FOR EACH ROW
    WHEN (OLD.* IS DISTINCT FROM NEW.*)
    EXECUTE FUNCTION lakeshop_touch_updated_at();

COMMENT ON TABLE sellers IS 'lakeshop schema version 1';
